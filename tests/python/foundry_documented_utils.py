"""The baseline: the executor helpers of Foundry's public sidecar example
(the `utils.py` its documentation has users copy into a transforms
repository), kept as documented: a 1 s sleep after the start flag, a 1 s
poll for the done flag that gives up silently after MAX_RUN_MINUTES, a 5 s
sleep before the close flag, non-atomic flags, missing outputs ignored.

One change, so that it can run outside Foundry beside
`sidecar_shim.foundry`: `VOLUME_PATH` is not the constant
`/opt/palantir/sidecars/shared-volumes/shared` but this task's volume, read
from `sidecar_shim.foundry` when a helper runs. The sidecar itself is
started by the same `sidecar_shim.foundry.sidecar` decorator for both, so a
comparison measures the helpers alone.

Shipped to the executors with `SparkContext.addPyFile`.
"""

import os
import shutil
import time

from sidecar_shim import foundry as _foundry

MAX_RUN_MINUTES = 10


def _volume():
    return _foundry.volume_path()  # documented: VOLUME_PATH = "/opt/palantir/sidecars/shared-volumes/shared"


def copy_files_to_shared_directory(source):
    source_fs = source.filesystem()
    for item in source_fs.ls():
        file_name = item.path
        with source_fs.open(file_name, "rb") as source_file:
            dest_path = os.path.join(_volume(), file_name)
            with open(dest_path, "wb") as shared_file:
                shutil.copyfileobj(source_file, shared_file)


def copy_start_flag():
    open(os.path.join(_volume(), "start_flag"), "w")
    time.sleep(1)


def wait_for_done_flag():
    i = 0
    while i < 60 * MAX_RUN_MINUTES and not os.path.exists(os.path.join(_volume(), "done_flag")):
        i += 1
        time.sleep(1)


def copy_output_files(output, fnames):
    for file_name in fnames:
        output_fs = output.filesystem()
        out_path = os.path.join(_volume(), file_name)
        try:
            with open(out_path, "rb") as shared_file:
                with output_fs.open(file_name, "wb") as output_file:
                    shutil.copyfileobj(shared_file, output_file)
        except FileNotFoundError as err:
            print(err)


def copy_output_files_with_prefix(output, fnames, prefix):
    for file_name in fnames:
        output_fs = output.filesystem()
        out_path = os.path.join(_volume(), file_name)
        try:
            with open(out_path, "rb") as shared_file:
                with output_fs.open(f"{prefix}_{file_name}", "wb") as output_file:
                    shutil.copyfileobj(shared_file, output_file)
        except FileNotFoundError as err:
            print(err)


def copy_close_flag():
    time.sleep(5)
    open(os.path.join(_volume(), "close_flag"), "w")


def launch_udf_once(ctx, user_defined_function):
    df = ctx.spark_session.createDataFrame([(1,)], "ExecutionID int")
    return df.rdd.map(user_defined_function).collect()

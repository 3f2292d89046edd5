"""Local stand-ins for the parts of Foundry's `transforms.api` a sidecar
transform touches: a context with `spark_session`, and inputs and outputs
whose `filesystem()` lists, opens and writes files (here: a directory).

Shipped to the executors with `SparkContext.addPyFile`.
"""

import collections
import os

FileStatus = collections.namedtuple("FileStatus", ["path", "size", "modified"])


class LocalFileSystem:
    def __init__(self, root):
        self.root = root

    def ls(self):
        out = []
        for dirpath, _, files in os.walk(self.root):
            for f in sorted(files):
                full = os.path.join(dirpath, f)
                st = os.stat(full)
                out.append(FileStatus(os.path.relpath(full, self.root), st.st_size, st.st_mtime))
        return out

    def open(self, path, mode="r", **kwargs):
        full = os.path.join(self.root, path)
        if any(c in mode for c in "wa"):
            os.makedirs(os.path.dirname(full), exist_ok=True)
        return open(full, mode, **kwargs)


class TransformInput:
    def __init__(self, root):
        self.root = root

    def filesystem(self):
        return LocalFileSystem(self.root)


class TransformOutput(TransformInput):
    pass


class TransformContext:
    def __init__(self, spark_session):
        self.spark_session = spark_session

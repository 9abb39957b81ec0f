"""py_sqlite: SQLite's locks, an unlinked temporary file and an flock
survive dump/restore, as in a Jupyter kernel writing its history.sqlite.

In $TMPDIR (on disk): test.db with one committed row; the parent holds an
open write transaction on it (BEGIN IMMEDIATE and an uncommitted insert:
SQLite holds POSIX locks on the file, RESERVED and SHARED), a
tempfile.TemporaryFile() (O_TMPFILE, unlinked) with 1 MiB of data at
offset 12345, and flock(LOCK_EX) on flock.lock. A checker child, forked
before the database was opened, takes commands through a pipe.

After the trigger: the checker still cannot start a write transaction nor
take the flock, and sees only the committed row; the parent commits; the
checker then sees both rows, can write, and gets the flock once the parent
lets it go. The temporary file is still unlinked, with its contents and
offset.
Run as: /usr/bin/python3 py_sqlite.py
"""
# Cases (the format is in CMakeLists.txt):
# stasis-selftest: selftest.py_sqlite ${PROGRAM}
# stasis-case: program.py_sqlite ${PROGRAM}
# stasis-case: program.py_sqlite.cycles3 ${PROGRAM} --cycles 3
# stasis-case: program.py_sqlite.nobody ${PROGRAM} --user nobody
import fcntl
import hashlib
import os
import signal
import sqlite3
import sys
import tempfile
import time

triggered = False


def on_usr2(signum, frame):
    global triggered
    triggered = True


def checker(cmd_r, res_w, db, lock_path):
    """Answers each command byte with one line on res_w."""
    cmds = os.fdopen(cmd_r, "rb", buffering=0)
    out = os.fdopen(res_w, "w", buffering=1)
    while True:
        c = cmds.read(1)
        if c in (b"", b"Q"):
            os._exit(0)
        problems = []
        conn = sqlite3.connect(db, timeout=0, isolation_level=None)
        rows = [r[0] for r in conn.execute("select v from t order by id")]
        lock_fd = os.open(lock_path, os.O_RDONLY)
        if c == b"L":  # the parent holds everything
            if rows != ["committed"]:
                problems.append(f"rows {rows}, expected only the committed one")
            try:
                conn.execute("BEGIN IMMEDIATE")
                problems.append("BEGIN IMMEDIATE succeeded: not locked out")
                conn.execute("ROLLBACK")
            except sqlite3.OperationalError as e:
                if "locked" not in str(e):
                    problems.append(f"BEGIN IMMEDIATE: {e}")
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                problems.append("flock LOCK_EX granted: not locked out")
            except BlockingIOError:
                pass
        else:  # committed and let go
            if rows != ["committed", "pending"]:
                problems.append(f"rows {rows} after the commit")
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("insert into t (v) values ('from child')")
                conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                problems.append(f"write after the commit: {e}")
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                problems.append("flock LOCK_EX refused after the parent let go")
        os.close(lock_fd)
        conn.close()
        out.write(("; ".join(problems) or "ok") + "\n")


def main():
    signal.signal(signal.SIGUSR2, on_usr2)
    tmp = os.environ.get("TMPDIR") or "."
    db = os.path.join(tmp, "test.db")
    lock_path = os.path.join(tmp, "flock.lock")
    open(lock_path, "w").close()
    setup = sqlite3.connect(db, isolation_level=None)
    setup.execute("create table t (id integer primary key, v text)")
    setup.execute("insert into t (v) values ('committed')")
    setup.close()

    cmd_r, cmd_w = os.pipe()
    res_r, res_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(cmd_w)
        os.close(res_r)
        checker(cmd_r, res_w, db, lock_path)
    os.close(cmd_r)
    os.close(res_w)
    results = os.fdopen(res_r, "r")

    def ask(c):
        os.write(cmd_w, c)
        return results.readline().strip()

    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("insert into t (v) values ('pending')")
    data = os.urandom(1 << 20)
    tf = tempfile.TemporaryFile(dir=tmp)
    tf.write(data)
    tf.flush()
    tf.seek(12345)
    lock_file = open(lock_path, "rb")
    fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
    before = ask(b"L")
    if before != "ok":
        print(f"FAIL: the checker before the dump: {before}", flush=True)
        return 1
    st = os.fstat(tf.fileno())
    if st.st_nlink != 0:
        print(f"FAIL: TemporaryFile has {st.st_nlink} links", flush=True)
        return 1

    print("READY", flush=True)
    while not triggered:
        time.sleep(0.05)

    failures = []
    # Locked out while the transaction is open.
    answer = ask(b"L")
    if answer != "ok":
        failures.append(f"checker while locked: {answer}")
    # The transaction goes on and commits.
    try:
        conn.execute("insert into t (v) values ('after restore')")
        conn.execute("delete from t where v = 'after restore'")
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        failures.append(f"commit after restore: {e}")
    fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
    answer = ask(b"U")
    if answer != "ok":
        failures.append(f"checker after the commit: {answer}")
    rows = [r[0] for r in conn.execute("select v from t order by id")]
    if rows != ["committed", "pending", "from child"]:
        failures.append(f"rows {rows}")
    # The temporary file: unlinked, same offset and contents.
    st = os.fstat(tf.fileno())
    link = os.readlink(f"/proc/self/fd/{tf.fileno()}")
    if st.st_nlink != 0 or not link.endswith(" (deleted)"):
        failures.append(f"TemporaryFile: nlink {st.st_nlink}, link {link!r}")
    if st.st_size != len(data):
        failures.append(f"TemporaryFile: size {st.st_size}")
    pos = os.lseek(tf.fileno(), 0, os.SEEK_CUR)
    if pos != 12345:
        failures.append(f"TemporaryFile: offset {pos}, expected 12345")
    tf.seek(0)
    if hashlib.sha256(tf.read()).digest() != hashlib.sha256(data).digest():
        failures.append("TemporaryFile: contents differ")

    os.write(cmd_w, b"Q")
    _, status = os.waitpid(child, 0)
    if status != 0:
        failures.append(f"checker ended with status {status:#x}")
    if failures:
        print("FAIL: " + "; ".join(failures), flush=True)
        return 1
    print("PASS", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

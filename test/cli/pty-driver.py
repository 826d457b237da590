# Run a command in a pseudo-terminal (as a user at a terminal would), answer prompts, and print
# {"code": exit code, "transcript": everything the terminal showed} as JSON.
# Input (stdin, JSON): {"argv": [...], "env": {...}, "steps": [[expected text, text to type], ...], "timeout": s}
import json, os, pty, select, sys, time

spec = json.load(sys.stdin)
pid, fd = pty.fork()
if pid == 0:
    os.execvpe(spec["argv"][0], spec["argv"], spec["env"])

deadline = time.time() + spec.get("timeout", 60)
out = b""
steps = list(spec["steps"])
seen = 0
while True:
    if time.time() > deadline:
        os.kill(pid, 9)
        break
    r, _, _ = select.select([fd], [], [], 0.05)
    if r:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            break
        out += data
    if steps and steps[0][0].encode() in out[seen:]:
        seen = out.index(steps[0][0].encode(), seen) + len(steps[0][0])
        os.write(fd, steps[0][1].encode())
        steps.pop(0)
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
print(json.dumps({"code": code, "transcript": out.decode("utf-8", "replace"), "unanswered": [s[0] for s in steps]}))

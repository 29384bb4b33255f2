//! A command run in a real terminal (a pseudo-terminal), typed into as a person types: what a
//! person sees is the transcript, prompts and echo included.

use std::path::Path;
use std::process::Command;

/// The driver: forks the command on a pty, waits for each expected text before typing its
/// answer, then collects everything the terminal showed.
const DRIVER: &str = r#"
import json, os, pty, select, sys, time
argv, env, steps = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
pid, fd = pty.fork()
if pid == 0:
    os.execve(argv[0], argv, {**os.environ, **env})
out, seen = b"", 0
def read(deadline):
    global out
    r, _, _ = select.select([fd], [], [], 0.2)
    if not r:
        return time.time() < deadline
    try:
        data = os.read(fd, 4096)
    except OSError:
        return False
    out += data
    return bool(data)
for expect, answer in steps:
    deadline = time.time() + 60
    while out.find(expect.encode(), seen) < 0:
        if not read(deadline):
            sys.stdout.buffer.write(out)
            sys.exit(97)
    seen = out.find(expect.encode(), seen) + len(expect)
    # An answer of a lone control character (Ctrl-C) is typed without Enter.
    os.write(fd, (answer if len(answer) == 1 and ord(answer) < 32 else answer + "\n").encode())
deadline = time.time() + 120
while read(deadline):
    pass
_, status = os.waitpid(pid, 0)
import termios
sys.stderr.write("echo=%d" % bool(termios.tcgetattr(fd)[3] & termios.ECHO))
sys.stdout.buffer.write(out)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// What a terminal session showed, and how the command ended.
#[derive(Debug)]
pub struct Transcript {
    /// The command's exit code (97: an expected prompt never came).
    pub code: i32,
    /// Everything the terminal showed.
    pub text: String,
    /// Whether the terminal echoes typing after the command ended (a hidden prompt interrupted
    /// must not leave it off).
    pub echo_left_on: bool,
}

/// Runs `exe args` on a terminal; for each `(prompt, answer)`, waits for `prompt` and types
/// `answer` and Enter (a lone control character such as `"\u{3}"`, Ctrl-C, without Enter).
pub fn run(exe: &Path, args: &[&str], env: &[(&str, &str)], steps: &[(&str, &str)]) -> Transcript {
    let argv: Vec<String> =
        std::iter::once(exe.display().to_string()).chain(args.iter().map(|a| a.to_string())).collect();
    let env: serde_json::Map<String, serde_json::Value> =
        env.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
    let out = Command::new("python3")
        .args(["-c", DRIVER])
        .arg(serde_json::to_string(&argv).unwrap())
        .arg(serde_json::to_string(&env).unwrap())
        .arg(serde_json::to_string(steps).unwrap())
        .output()
        .expect("python3 drives the terminal");
    Transcript {
        code: out.status.code().unwrap_or(-1),
        text: String::from_utf8_lossy(&out.stdout).into_owned(),
        echo_left_on: String::from_utf8_lossy(&out.stderr).contains("echo=1"),
    }
}

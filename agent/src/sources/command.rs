//! Runs an external tool (smartctl, ipmitool) with a deadline. The SMART and
//! IPMI sources share it so that a hung tool is killed the same way
//! everywhere, and so a missing binary is told apart from a failing one
//! (the first is "no such capability" and reported once, the second is data).

use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// What a finished command produced.
#[derive(Debug)]
pub struct CommandOutput {
    /// Everything the command wrote to standard output.
    pub stdout: Vec<u8>,
    /// Its exit status (smartctl encodes findings in the bits, so a non-zero
    /// status is not a failure by itself).
    pub status: ExitStatus,
}

/// Why a command produced no output.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The binary does not exist (the tool is not installed).
    #[error("{program}: not found")]
    NotFound {
        /// The program as configured.
        program: String,
    },
    /// The binary exists but may not be executed.
    #[error("{program}: permission denied")]
    PermissionDenied {
        /// The program as configured.
        program: String,
    },
    /// The command ran past its deadline and was killed.
    #[error("{program}: no answer within {timeout:?}; killed")]
    Timeout {
        /// The program as configured.
        program: String,
        /// The deadline it missed.
        timeout: Duration,
    },
    /// Starting or waiting for the command failed otherwise.
    #[error("{program}: {source}")]
    Io {
        /// The program as configured.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Runs `program args...` with no input, discarding standard error, and
/// returns its standard output once it exits. A command still running after
/// `timeout` is killed (and reaped, so no zombie is left).
///
/// Standard output is read on a helper thread so a command that fills the
/// pipe cannot block itself, and so the deadline is a channel receive
/// rather than a polling loop.
pub fn run_with_timeout(program: &Path, args: &[&str], timeout: Duration) -> Result<CommandOutput, CommandError> {
    let name = program.display().to_string();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => CommandError::NotFound { program: name.clone() },
            std::io::ErrorKind::PermissionDenied => CommandError::PermissionDenied { program: name.clone() },
            _ => CommandError::Io {
                program: name.clone(),
                source,
            },
        })?;
    let Some(mut stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(CommandError::Io {
            program: name,
            source: std::io::Error::other("standard output was not captured"),
        });
    };
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("hostpulse-cmd".into())
        .spawn(move || {
            let mut buf = Vec::new();
            let result = stdout.read_to_end(&mut buf).map(|_| buf);
            // The receiver is gone when the deadline passed; nothing to do.
            let _ = tx.send(result);
        })
        .map_err(|source| CommandError::Io {
            program: name.clone(),
            source,
        })?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(stdout)) => {
            let status = child.wait().map_err(|source| CommandError::Io {
                program: name.clone(),
                source,
            })?;
            Ok(CommandOutput { stdout, status })
        }
        Ok(Err(source)) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(CommandError::Io { program: name, source })
        }
        Err(_) => {
            // Killing closes the pipe, which ends the reader thread too.
            let _ = child.kill();
            let _ = child.wait();
            Err(CommandError::Timeout { program: name, timeout })
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn output_and_status_are_returned() {
        let out = run_with_timeout(Path::new("sh"), &["-c", "echo hello; exit 3"], Duration::from_secs(10));
        match out {
            Ok(out) => {
                assert_eq!(out.stdout, b"hello\n");
                assert_eq!(out.status.code(), Some(3));
            }
            Err(e) => panic!("sh failed: {e}"),
        }
    }

    #[test]
    fn a_missing_binary_is_not_found() {
        let err = run_with_timeout(Path::new("/nonexistent/hostpulse-tool"), &[], Duration::from_secs(1));
        assert!(matches!(err, Err(CommandError::NotFound { .. })), "{err:?}");
    }

    #[test]
    fn a_hung_command_is_killed_at_the_deadline() {
        let started = Instant::now();
        let err = run_with_timeout(Path::new("sh"), &["-c", "exec sleep 30"], Duration::from_millis(200));
        assert!(matches!(err, Err(CommandError::Timeout { .. })), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }
}

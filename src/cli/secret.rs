//! Secrets on the command line without the shell's history seeing them: from an option, an
//! environment variable (clap reads it; its value is never shown in `--help`), a file, stdin
//! (`--…-file -`), or a prompt with the terminal's echo off.

use std::io::{BufRead, IsTerminal, Write};

/// Where a secret comes from, as the options gave it.
pub struct SecretSource<'a> {
    /// `--secret S` or its environment variable.
    pub value: Option<String>,
    /// `--secret-file PATH`, `-` for stdin.
    pub file: Option<&'a str>,
    /// What to call it in a prompt or an error ("CHAP secret of host esx1").
    pub what: String,
}

impl SecretSource<'_> {
    /// The secret, or `None` if no source gave one and stdin is not a terminal to ask on.
    pub fn read(self, prompt_if_missing: bool) -> Result<Option<String>, String> {
        if let Some(value) = self.value {
            return Ok(Some(value));
        }
        if let Some(path) = self.file {
            let text = if path == "-" {
                // One line per secret: `--secret-file - --mutual-secret-file -` reads two.
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .map_err(|e| format!("reading the {} from stdin: {e}", self.what))?;
                line
            } else {
                std::fs::read_to_string(path)
                    .map_err(|e| format!("reading the {} from {path}: {e}", self.what))?
            };
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            return Ok(Some(text.to_string()));
        }
        if prompt_if_missing && std::io::stdin().is_terminal() {
            return prompt(&self.what).map(Some);
        }
        Ok(None)
    }
}

/// Asks on the terminal with echo off, and turns echo back on whatever happens.
fn prompt(what: &str) -> Result<String, String> {
    eprint!("{what}: ");
    let _ = std::io::stderr().flush();
    let echo = EchoOff::new();
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    drop(echo);
    eprintln!();
    read.map_err(|e| format!("reading the {what}: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// The terminal on stdin with echo off until dropped (nothing if stdin is no terminal).
struct EchoOff {
    saved: Option<libc::termios>,
}

impl EchoOff {
    fn new() -> Self {
        // SAFETY: a zeroed termios is a valid value for tcgetattr to overwrite.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 stays open for the process's life; `saved` is a valid termios to fill.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return Self { saved: None };
        }
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: as above; `quiet` is a termios tcgetattr filled, with echo cleared.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &quiet) } != 0 {
            return Self { saved: None };
        }
        Self { saved: Some(saved) }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restores the settings tcgetattr returned for the same fd.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
        }
    }
}

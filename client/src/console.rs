//! Where a command's words go: results on stdout (what a script reads), notes and prompts on
//! stderr (what a person reads). Commands write through a [`Console`] so tests can capture both.

use std::fmt::Display;
use std::io::Write;

use crate::error::Error;

pub struct Console<'a> {
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
    /// stderr is a terminal: progress bars may be drawn.
    pub stderr_is_terminal: bool,
}

impl<'a> Console<'a> {
    pub fn new(out: &'a mut dyn Write, err: &'a mut dyn Write, stderr_is_terminal: bool) -> Self {
        Self {
            out,
            err,
            stderr_is_terminal,
        }
    }

    /// A line of the result, on stdout, flushed at once (a `--follow` reader sees it now).
    pub fn line(&mut self, text: impl Display) -> Result<(), Error> {
        writeln!(self.out, "{text}")
            .and_then(|()| self.out.flush())
            .map_err(Error::Output)
    }

    /// A note for the person at the terminal, on stderr. A note that cannot be written is not
    /// worth failing the command for.
    pub fn note(&mut self, text: impl Display) {
        let _ = writeln!(self.err, "{text}").and_then(|()| self.err.flush());
    }
}

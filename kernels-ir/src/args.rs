//! `name = value` argument lists, shared by the text format (`pq-topk(topk = L/8, ...)`) and the
//! command line (`--param topk=16`): one place decides how a pattern argument is spelled and parsed.

use std::fmt;
use std::str::FromStr;

/// A problem with one argument of a pattern or schedule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{owner}: {message}")]
pub struct ArgError {
    /// What the argument list belongs to (`pq-topk`, `schedule`, ...).
    pub owner: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// An ordered list of `name = value` pairs whose values are still text; the typed getters consume
/// them and [`Args::finish`] rejects whatever was not consumed.
#[derive(Clone, Debug)]
pub struct Args {
    owner: String,
    items: Vec<(String, String)>,
    used: Vec<bool>,
}

impl Args {
    /// Wraps `items`; rejects a name given twice.
    pub fn new(owner: &str, items: Vec<(String, String)>) -> Result<Self, ArgError> {
        for (i, (name, _)) in items.iter().enumerate() {
            if items[..i].iter().any(|(n, _)| n == name) {
                return Err(ArgError {
                    owner: owner.to_string(),
                    message: format!("`{name}` is given twice; give each argument once"),
                });
            }
        }
        let used = vec![false; items.len()];
        Ok(Self {
            owner: owner.to_string(),
            items,
            used,
        })
    }

    fn err(&self, message: String) -> ArgError {
        ArgError {
            owner: self.owner.clone(),
            message,
        }
    }

    /// The raw text of `name`, marking it consumed.
    pub fn raw(&mut self, name: &str) -> Option<String> {
        let i = self.items.iter().position(|(n, _)| n == name)?;
        self.used[i] = true;
        Some(self.items[i].1.clone())
    }

    /// Parses `name` with `FromStr`, or returns `default` when absent.
    pub fn parse_or<T>(&mut self, name: &str, default: T, what: &str) -> Result<T, ArgError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.raw(name) {
            None => Ok(default),
            Some(text) => text
                .parse::<T>()
                .map_err(|e| self.err(format!("`{name}` = `{text}` is not {what}: {e}"))),
        }
    }

    /// A non-negative integer argument.
    pub fn usize_or(&mut self, name: &str, default: usize) -> Result<usize, ArgError> {
        self.parse_or(name, default, "a non-negative integer")
    }

    /// A required non-negative integer argument.
    pub fn usize_required(&mut self, name: &str) -> Result<usize, ArgError> {
        match self.raw(name) {
            None => Err(self.err(format!("`{name}` is required (a non-negative integer)"))),
            Some(text) => text.parse::<usize>().map_err(|e| {
                self.err(format!(
                    "`{name}` = `{text}` is not a non-negative integer: {e}"
                ))
            }),
        }
    }

    /// A finite floating-point argument.
    pub fn f64_or(&mut self, name: &str, default: f64) -> Result<f64, ArgError> {
        let v: f64 = self.parse_or(name, default, "a number")?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(self.err(format!(
                "`{name}` = {v} is not finite; give a finite number"
            )))
        }
    }

    /// A boolean argument (`true`/`false`).
    pub fn bool_or(&mut self, name: &str, default: bool) -> Result<bool, ArgError> {
        self.parse_or(name, default, "`true` or `false`")
    }

    /// Fails on any argument no getter consumed, listing the accepted names.
    pub fn finish(self, accepted: &[&str]) -> Result<(), ArgError> {
        let unknown: Vec<&str> = self
            .items
            .iter()
            .zip(&self.used)
            .filter(|(_, used)| !**used)
            .map(|((n, _), _)| n.as_str())
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(self.err(format!(
                "unknown argument{} {}; accepted: {}",
                if unknown.len() > 1 { "s" } else { "" },
                unknown
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                accepted.join(", ")
            )))
        }
    }
}

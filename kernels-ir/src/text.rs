//! The IR's text format. `Display` prints it, `FromStr` parses it, and printing what was parsed
//! gives the canonical text back (print → parse → print is the identity):
//!
//! ```text
//! # SPT attention forward, SPT's defaults
//! kernel spt_fwd {
//!   op = spt-attention
//!   direction = forward
//!   dtype = f32
//!   pattern = pq-topk(topk = L/8, selector = pq-match, causal = false, clamp = false, sub_dim = 8, codewords = 16)
//!   dims = (B = 2, H = 4, L = 128, D = 64)
//!   schedule = (tile_m = 64, tile_n = 64, tile_k = 32, vector = 4, stages = 2, fused = true)
//! }
//! ```
//!
//! Only `op` is required; the other fields default to forward, f32, the op's published pattern
//! defaults, no dims and the default schedule. Parsing checks syntax and argument types; the
//! [verifier](crate::verify) checks meaning.

use crate::args::ArgError;
use crate::dtype::DType;
use crate::op::{Direction, OpKind};
use crate::pattern::{Pattern, PatternKind};
use crate::schedule::Schedule;
use crate::spec::{KernelSpec, Module};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

impl fmt::Display for KernelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel {} {{", self.name)?;
        writeln!(f, "  op = {}", self.op)?;
        writeln!(f, "  direction = {}", self.direction)?;
        writeln!(f, "  dtype = {}", self.dtype)?;
        writeln!(f, "  pattern = {}", self.pattern)?;
        let dims: Vec<String> = self
            .dims_in_order()
            .iter()
            .map(|(n, v)| format!("{n} = {v}"))
            .collect();
        writeln!(f, "  dims = ({})", dims.join(", "))?;
        writeln!(f, "  schedule = {}", self.schedule)?;
        write!(f, "}}")
    }
}

impl fmt::Display for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, k) in self.kernels.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "{k}")?;
        }
        Ok(())
    }
}

/// A syntax or argument error, with the 1-based position where it was found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What was expected and what was found.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Sym(char),
    Eof,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Word(w) => write!(f, "`{w}`"),
            Tok::Sym(c) => write!(f, "`{c}`"),
            Tok::Eof => f.write_str("end of input"),
        }
    }
}

struct Token {
    tok: Tok,
    line: usize,
    column: usize,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+')
}

fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let mut out = Vec::new();
    let (mut line, mut column) = (1, 1);
    let mut chars = src.chars().peekable();
    while let Some(&c) = chars.peek() {
        let (l0, c0) = (line, column);
        if c == '\n' {
            chars.next();
            line += 1;
            column = 1;
        } else if c.is_whitespace() {
            chars.next();
            column += 1;
        } else if c == '#' {
            while let Some(&c) = chars.peek() {
                if c == '\n' {
                    break;
                }
                chars.next();
                column += 1;
            }
        } else if matches!(c, '{' | '}' | '(' | ')' | '=' | ',' | '/') {
            chars.next();
            column += 1;
            out.push(Token {
                tok: Tok::Sym(c),
                line: l0,
                column: c0,
            });
        } else if is_word_char(c) {
            let mut w = String::new();
            while let Some(&c) = chars.peek() {
                if !is_word_char(c) {
                    break;
                }
                w.push(c);
                chars.next();
                column += 1;
            }
            out.push(Token {
                tok: Tok::Word(w),
                line: l0,
                column: c0,
            });
        } else {
            return Err(ParseError {
                line,
                column,
                message: format!("unexpected character `{c}`"),
            });
        }
    }
    out.push(Token {
        tok: Tok::Eof,
        line,
        column,
    });
    Ok(out)
}

/// A pattern's family and raw arguments, with the position of its name for error messages.
type PatternAt = (PatternKind, Vec<(String, String)>, usize, usize);

struct Parser {
    toks: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.toks[self.pos]
    }
    fn next(&mut self) -> &Token {
        let t = &self.toks[self.pos];
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }
    fn err_at(t: &Token, message: String) -> ParseError {
        ParseError {
            line: t.line,
            column: t.column,
            message,
        }
    }
    fn expect_sym(&mut self, c: char, context: &str) -> Result<(), ParseError> {
        let t = self.next();
        if t.tok == Tok::Sym(c) {
            Ok(())
        } else {
            Err(Self::err_at(
                t,
                format!("expected `{c}` {context}, found {}", t.tok),
            ))
        }
    }
    fn expect_word(&mut self, context: &str) -> Result<(String, usize, usize), ParseError> {
        let t = self.next();
        match &t.tok {
            Tok::Word(w) => Ok((w.clone(), t.line, t.column)),
            other => Err(Self::err_at(
                t,
                format!("expected {context}, found {other}"),
            )),
        }
    }

    /// `( name = value, ... )`; a value is every token up to the next `,` or `)`, joined.
    fn arg_list(&mut self, owner: &str) -> Result<Vec<(String, String)>, ParseError> {
        self.expect_sym('(', &format!("to open the arguments of {owner}"))?;
        let mut items = Vec::new();
        loop {
            if self.peek().tok == Tok::Sym(')') {
                self.next();
                return Ok(items);
            }
            let (name, ..) = self.expect_word(&format!("an argument name of {owner} or `)`"))?;
            self.expect_sym('=', &format!("after `{name}` in {owner}"))?;
            let mut value = String::new();
            loop {
                let t = self.peek();
                match &t.tok {
                    Tok::Word(w) => value.push_str(w),
                    Tok::Sym('/') => value.push('/'),
                    Tok::Sym(',') | Tok::Sym(')') => break,
                    other if value.is_empty() => {
                        return Err(Self::err_at(
                            t,
                            format!("expected a value for `{name}` in {owner}, found {other}"),
                        ));
                    }
                    other => {
                        return Err(Self::err_at(
                            t,
                            format!(
                                "expected `,` or `)` after `{name} = {value}` in {owner}, found {other}"
                            ),
                        ));
                    }
                }
                self.next();
            }
            if value.is_empty() {
                let t = self.peek();
                return Err(Self::err_at(t, format!("`{name}` in {owner} has no value")));
            }
            items.push((name, value));
            if self.peek().tok == Tok::Sym(',') {
                self.next();
            }
        }
    }

    fn kernel(&mut self) -> Result<KernelSpec, ParseError> {
        let (kw, line, column) = self.expect_word("`kernel`")?;
        if kw != "kernel" {
            return Err(ParseError {
                line,
                column,
                message: format!("expected `kernel`, found `{kw}`"),
            });
        }
        let (name, ..) = self.expect_word("a kernel name after `kernel`")?;
        self.expect_sym('{', &format!("after `kernel {name}`"))?;

        let mut op: Option<OpKind> = None;
        let mut direction = None;
        let mut dtype = None;
        let mut pattern: Option<PatternAt> = None;
        let mut dims: Option<BTreeMap<String, usize>> = None;
        let mut schedule = None;
        let mut seen: Vec<String> = Vec::new();
        loop {
            if self.peek().tok == Tok::Sym('}') {
                self.next();
                break;
            }
            let (field, fl, fc) =
                self.expect_word(&format!("a field of kernel `{name}` or `}}`"))?;
            if seen.contains(&field) {
                return Err(ParseError {
                    line: fl,
                    column: fc,
                    message: format!("field `{field}` is given twice"),
                });
            }
            seen.push(field.clone());
            self.expect_sym('=', &format!("after `{field}`"))?;
            let bad = |m: String| ParseError {
                line: fl,
                column: fc,
                message: m,
            };
            match field.as_str() {
                "op" => {
                    let (w, ..) = self.expect_word("an op name")?;
                    op = Some(w.parse().map_err(bad)?);
                }
                "direction" => {
                    let (w, ..) = self.expect_word("`forward` or `backward`")?;
                    direction = Some(w.parse::<Direction>().map_err(bad)?);
                }
                "dtype" => {
                    let (w, ..) = self.expect_word("a dtype")?;
                    dtype = Some(w.parse::<DType>().map_err(bad)?);
                }
                "pattern" => {
                    let (w, pl, pc) = self.expect_word("a pattern name")?;
                    let kind: PatternKind = w.parse().map_err(|m| ParseError {
                        line: pl,
                        column: pc,
                        message: m,
                    })?;
                    let args = if self.peek().tok == Tok::Sym('(') {
                        self.arg_list(&w)?
                    } else {
                        vec![]
                    };
                    pattern = Some((kind, args, pl, pc));
                }
                "dims" => {
                    let mut map = BTreeMap::new();
                    for (n, v) in self.arg_list("dims")? {
                        let value = v.parse::<usize>().map_err(|_| {
                            bad(format!("dim `{n}` = `{v}` is not a non-negative integer"))
                        })?;
                        if map.insert(n.clone(), value).is_some() {
                            return Err(bad(format!("dim `{n}` is given twice")));
                        }
                    }
                    dims = Some(map);
                }
                "schedule" => {
                    let args = self.arg_list("schedule")?;
                    schedule = Some(Schedule::from_args(args).map_err(|e| bad(e.to_string()))?);
                }
                other => {
                    return Err(bad(format!(
                        "unknown field `{other}` (fields: op, direction, dtype, pattern, dims, schedule)"
                    )));
                }
            }
        }
        let op = op.ok_or_else(|| ParseError {
            line,
            column,
            message: format!("kernel `{name}` has no `op = ...` field"),
        })?;
        let pattern = match pattern {
            Some((kind, args, pl, pc)) => {
                Pattern::from_args(kind, args).map_err(|e: ArgError| ParseError {
                    line: pl,
                    column: pc,
                    message: e.to_string(),
                })?
            }
            None => match op.pattern_kind() {
                PatternKind::Monarch => {
                    return Err(ParseError {
                        line,
                        column,
                        message: format!(
                            "kernel `{name}`: {op} needs `pattern = monarch(k = .., q = .., p = .., l = .., s = .., r = ..)`"
                        ),
                    });
                }
                // Unreachable from input: every family but Monarch (handled above) has defaults for all
                // of its arguments, which `from_args` accepts (tested for each family).
                kind => Pattern::from_args(kind, vec![]).expect("published defaults parse"),
            },
        };
        Ok(KernelSpec {
            name,
            op,
            direction: direction.unwrap_or(Direction::Forward),
            dtype: dtype.unwrap_or(DType::F32),
            pattern,
            dims: dims.unwrap_or_default(),
            schedule: schedule.unwrap_or_default(),
        })
    }
}

impl FromStr for Module {
    type Err = ParseError;
    fn from_str(src: &str) -> Result<Self, ParseError> {
        let mut p = Parser {
            toks: lex(src)?,
            pos: 0,
        };
        let mut kernels = Vec::new();
        while p.peek().tok != Tok::Eof {
            kernels.push(p.kernel()?);
        }
        Ok(Module { kernels })
    }
}

impl FromStr for KernelSpec {
    type Err = ParseError;
    fn from_str(src: &str) -> Result<Self, ParseError> {
        let mut p = Parser {
            toks: lex(src)?,
            pos: 0,
        };
        let k = p.kernel()?;
        let t = p.peek();
        if t.tok != Tok::Eof {
            return Err(Parser::err_at(
                t,
                format!("expected end of input after the kernel, found {}", t.tok),
            ));
        }
        Ok(k)
    }
}

//! A reader for the protobuf text format of Triton's `config.pbtxt`.
//!
//! It parses into a schema-free tree ([`Message`]); `model_config.rs` maps the
//! tree onto typed fields and rejects what it does not know. Keeping the two
//! apart keeps this file a plain tokenizer and recursive-descent parser with
//! a depth limit, so a hostile config cannot blow the stack.

use std::fmt;

/// Deepest nesting of messages accepted; Triton configs use four or five.
const MAX_DEPTH: usize = 32;

/// A scalar as written: the mapping layer decides what it means.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    /// A quoted string (adjacent strings concatenated), escapes resolved.
    Str(String),
    /// A number, kept as written (`-1`, `0x10`, `1.5e3`).
    Number(String),
    /// A bare identifier: enum value, `true`, `false`.
    Ident(String),
}

/// A field's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A scalar.
    Scalar(Scalar),
    /// A nested message.
    Message(Message),
}

/// One `name: value` or `name { ... }` entry, with where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    /// Field name.
    pub name: String,
    /// Its value; list syntax (`dims: [1, 2]`) becomes one field per element.
    pub value: Value,
    /// 1-based line of the field name.
    pub line: usize,
}

/// A message: its fields in the order written (repeated fields repeat).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    /// The fields.
    pub fields: Vec<Field>,
}

/// A syntax error with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses a whole text-format message.
pub fn parse(text: &str) -> Result<Message, ParseError> {
    let mut parser = Parser { tokens: Lexer::new(text).tokens()?, pos: 0 };
    let message = parser.message(0, None)?;
    Ok(message)
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Number(String),
    Str(String),
    Punct(char),
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    line: usize,
    column: usize,
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
    column: usize,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str) -> Self {
        Lexer { chars: text.chars().peekable(), line: 1, column: 1 }
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError { line: self.line, column: self.column, message: message.into() }
    }

    fn tokens(mut self) -> Result<Vec<Token>, ParseError> {
        let mut out = Vec::new();
        while let Some(&c) = self.chars.peek() {
            let (line, column) = (self.line, self.column);
            let tok = match c {
                c if c.is_whitespace() => {
                    self.bump();
                    continue;
                }
                '#' => {
                    while self.chars.peek().is_some_and(|&c| c != '\n') {
                        self.bump();
                    }
                    continue;
                }
                '"' | '\'' => Tok::Str(self.string()?),
                c if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => Tok::Number(self.word()),
                c if c.is_ascii_alphabetic() || c == '_' => Tok::Ident(self.word()),
                '{' | '}' | '[' | ']' | '<' | '>' | ':' | ',' | ';' => {
                    self.bump();
                    Tok::Punct(c)
                }
                other => return Err(self.error(format!("unexpected character {other:?}"))),
            };
            // Adjacent string literals concatenate, as in protobuf.
            if let (Tok::Str(s), Some(Token { tok: Tok::Str(prev), .. })) = (&tok, out.last_mut()) {
                prev.push_str(s);
                continue;
            }
            out.push(Token { tok, line, column });
        }
        Ok(out)
    }

    fn word(&mut self) -> String {
        let mut s = String::new();
        while let Some(&c) = self.chars.peek() {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '+') {
                s.push(c);
                self.bump();
            } else {
                break;
            }
        }
        s
    }

    fn string(&mut self) -> Result<String, ParseError> {
        let Some(quote) = self.bump() else {
            return Err(self.error("expected a string"));
        };
        let mut bytes = Vec::new();
        loop {
            match self.bump() {
                None | Some('\n') => return Err(self.error("unterminated string")),
                Some(c) if c == quote => break,
                Some('\\') => {
                    let escaped = self.bump().ok_or_else(|| self.error("unterminated escape"))?;
                    match escaped {
                        'n' => bytes.push(b'\n'),
                        't' => bytes.push(b'\t'),
                        'r' => bytes.push(b'\r'),
                        '\\' | '"' | '\'' => bytes.push(escaped as u8),
                        '0'..='7' => {
                            let mut value = escaped.to_digit(8).unwrap_or(0);
                            for _ in 0..2 {
                                match self.chars.peek().and_then(|c| c.to_digit(8)) {
                                    Some(d) => {
                                        value = value * 8 + d;
                                        self.bump();
                                    }
                                    None => break,
                                }
                            }
                            bytes.push((value & 0xff) as u8);
                        }
                        other => return Err(self.error(format!("unknown escape \\{other}"))),
                    }
                }
                Some(c) => {
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        String::from_utf8(bytes).map_err(|_| self.error("string is not UTF-8"))
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn error_at(&self, message: impl Into<String>) -> ParseError {
        let (line, column) = self.peek().or_else(|| self.tokens.last()).map_or((1, 1), |t| (t.line, t.column));
        ParseError { line, column, message: message.into() }
    }

    fn eat_punct(&mut self, c: char) -> bool {
        if matches!(self.peek(), Some(Token { tok: Tok::Punct(p), .. }) if *p == c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Parses fields until `close` (or the end of input at the top level).
    fn message(&mut self, depth: usize, close: Option<char>) -> Result<Message, ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.error_at(format!("messages nested deeper than {MAX_DEPTH}")));
        }
        let mut message = Message::default();
        loop {
            match (self.peek().map(|t| t.tok.clone()), close) {
                (None, None) => return Ok(message),
                (None, Some(c)) => return Err(self.error_at(format!("missing '{c}'"))),
                (Some(Tok::Punct(p)), Some(c)) if p == c => {
                    self.pos += 1;
                    return Ok(message);
                }
                (Some(Tok::Ident(name)), _) => {
                    let line = self.peek().map_or(1, |t| t.line);
                    self.pos += 1;
                    self.field_value(&name, line, depth, &mut message)?;
                    // Optional separators between fields.
                    if !self.eat_punct(',') {
                        self.eat_punct(';');
                    }
                }
                (Some(other), _) => {
                    return Err(self.error_at(format!("expected a field name, found {other:?}")));
                }
            }
        }
    }

    fn field_value(&mut self, name: &str, line: usize, depth: usize, out: &mut Message) -> Result<(), ParseError> {
        let colon = self.eat_punct(':');
        let push = |out: &mut Message, value| out.fields.push(Field { name: name.to_owned(), value, line });
        if self.eat_punct('[') {
            if !self.eat_punct(']') {
                loop {
                    let value = self.value(depth)?;
                    push(out, value);
                    if self.eat_punct(']') {
                        break;
                    }
                    if !self.eat_punct(',') {
                        return Err(self.error_at("expected ',' or ']' in a list"));
                    }
                }
            }
            return Ok(());
        }
        if let Some(close) = self.open_brace() {
            let nested = self.message(depth + 1, Some(close))?;
            push(out, Value::Message(nested));
            return Ok(());
        }
        if !colon {
            return Err(self.error_at(format!("expected ':' or '{{' after '{name}'")));
        }
        let value = self.scalar()?;
        push(out, Value::Scalar(value));
        Ok(())
    }

    fn open_brace(&mut self) -> Option<char> {
        if self.eat_punct('{') {
            Some('}')
        } else if self.eat_punct('<') {
            Some('>')
        } else {
            None
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        if let Some(close) = self.open_brace() {
            return Ok(Value::Message(self.message(depth + 1, Some(close))?));
        }
        Ok(Value::Scalar(self.scalar()?))
    }

    fn scalar(&mut self) -> Result<Scalar, ParseError> {
        match self.next().map(|t| t.tok) {
            Some(Tok::Str(s)) => Ok(Scalar::Str(s)),
            Some(Tok::Number(n)) => Ok(Scalar::Number(n)),
            Some(Tok::Ident(i)) => Ok(Scalar::Ident(i)),
            Some(other) => {
                self.pos -= 1;
                Err(self.error_at(format!("expected a value, found {other:?}")))
            }
            None => Err(self.error_at("expected a value, found the end of the file")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_triton_config_with_lists_nesting_and_comments() {
        let text = r#"
            name: "simple"   # the model
            platform: "onnxruntime_onnx"
            max_batch_size: 8
            input [
              { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
              { name: "INPUT1", data_type: TYPE_INT32, dims: [ -1, 2 ] }
            ]
            dynamic_batching { preferred_batch_size: [4, 8] max_queue_delay_microseconds: 100 }
            instance_group < count: 2 kind: KIND_CPU >
            parameters { key: "k" value: { string_value: "a" "b" } }
        "#;
        let m = parse(text).unwrap();
        let names: Vec<&str> = m.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "name",
                "platform",
                "max_batch_size",
                "input",
                "input",
                "dynamic_batching",
                "instance_group",
                "parameters"
            ]
        );
        let Value::Message(input1) = &m.fields[4].value else { panic!("message") };
        let dims: Vec<&Value> = input1.fields.iter().filter(|f| f.name == "dims").map(|f| &f.value).collect();
        assert_eq!(dims, [&Value::Scalar(Scalar::Number("-1".into())), &Value::Scalar(Scalar::Number("2".into()))]);
        let Value::Message(params) = &m.fields[7].value else { panic!("message") };
        let Value::Message(value) = &params.fields[1].value else { panic!("message") };
        assert_eq!(value.fields[0].value, Value::Scalar(Scalar::Str("ab".into())));
    }

    #[test]
    fn reports_syntax_errors_with_their_position() {
        let err = parse("name: \"x\"\nmax_batch_size 8").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("expected ':'"), "{err}");
        assert!(parse("input { name: \"a\"").unwrap_err().message.contains("missing '}'"));
        assert!(parse("name: \"open").unwrap_err().message.contains("unterminated"));
        assert!(parse("dims: [1, 2").is_err());
        assert!(parse("$").is_err());
    }

    #[test]
    fn refuses_nesting_past_the_depth_limit() {
        let deep = "a { ".repeat(100) + &"}".repeat(100);
        assert!(parse(&deep).unwrap_err().message.contains("nested deeper"));
        let ok = "a { ".repeat(10) + &"}".repeat(10);
        assert!(parse(&ok).is_ok());
    }
}

//! `WWW-Authenticate` as RFC 7235 defines it: one or more challenges, each
//! a case-insensitive scheme followed by either a token68 or comma-separated
//! `name=value` parameters whose values may be quoted strings holding
//! commas and backslash escapes. A registry's Bearer challenge carries
//! `scope="repository:NAME:pull,push"`, so splitting on commas is wrong.

use anyhow::{bail, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercase: schemes compare case-insensitively.
    pub scheme: String,
    /// Names lowercase, values unescaped, in header order.
    pub params: Vec<(String, String)>,
    /// The token68 form (`Negotiate abc==`), rare for registries.
    pub token68: Option<String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Every challenge in a `WWW-Authenticate` value; an error when the value
/// does not follow the grammar, so that a garbled header is reported as
/// such rather than as a missing realm.
pub fn parse(header: &str) -> Result<Vec<Challenge>> {
    let mut p = Parser {
        text: header.as_bytes(),
        pos: 0,
    };
    let mut challenges = Vec::new();
    loop {
        p.skip_list_separators();
        if p.at_end() {
            break;
        }
        let scheme = p.token();
        if scheme.is_empty() {
            bail!(
                "cannot parse WWW-Authenticate {header:?}: expected a scheme at byte {}",
                p.pos
            );
        }
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
            token68: None,
        };
        let spaced = p.skip_spaces();
        if spaced && !p.at_end() && p.peek() != Some(b',') {
            if let Some(token68) = p.token68() {
                challenge.token68 = Some(token68);
            } else {
                p.params(header, &mut challenge.params)?;
            }
        } else if !p.at_end() && p.peek() != Some(b',') {
            bail!(
                "cannot parse WWW-Authenticate {header:?}: unexpected {:?} after the scheme {scheme}",
                char::from(p.text[p.pos])
            );
        }
        challenges.push(challenge);
    }
    if challenges.is_empty() {
        bail!("cannot parse WWW-Authenticate {header:?}: it holds no challenge");
    }
    Ok(challenges)
}

struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn skip_spaces(&mut self) -> bool {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        self.pos > start
    }

    /// Empty list elements are allowed (`a, , b`).
    fn skip_list_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.pos += 1;
        }
    }

    fn token(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        String::from_utf8_lossy(&self.text[start..self.pos]).into_owned()
    }

    /// A token68 is the whole rest of this challenge: its characters, then
    /// `=` padding, then the end or a comma. Anything else is parameters.
    fn token68(&mut self) -> Option<String> {
        let start = self.pos;
        let mut end = start;
        while self
            .text
            .get(end)
            .is_some_and(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(b))
        {
            end += 1;
        }
        if end == start {
            return None;
        }
        while self.text.get(end) == Some(&b'=') {
            end += 1;
        }
        let mut after = end;
        while matches!(self.text.get(after), Some(b' ' | b'\t')) {
            after += 1;
        }
        if after < self.text.len() && self.text[after] != b',' {
            return None;
        }
        self.pos = end;
        Some(String::from_utf8_lossy(&self.text[start..end]).into_owned())
    }

    /// `name = value` pairs until the next challenge or the end. After a
    /// comma, a token not followed by `=` starts the next challenge.
    fn params(&mut self, header: &str, params: &mut Vec<(String, String)>) -> Result<()> {
        loop {
            self.skip_list_separators();
            if self.at_end() {
                return Ok(());
            }
            let start = self.pos;
            let name = self.token();
            self.skip_spaces();
            if name.is_empty() || self.peek() != Some(b'=') {
                if params.is_empty() || name.is_empty() {
                    bail!(
                        "cannot parse WWW-Authenticate {header:?}: expected name=value at byte {start}"
                    );
                }
                // The next challenge's scheme.
                self.pos = start;
                return Ok(());
            }
            self.pos += 1;
            self.skip_spaces();
            let value = if self.peek() == Some(b'"') {
                self.quoted(header)?
            } else {
                let value = self.token();
                if value.is_empty() {
                    bail!("cannot parse WWW-Authenticate {header:?}: the parameter {name} has no value");
                }
                value
            };
            params.push((name.to_ascii_lowercase(), value));
            self.skip_spaces();
            match self.peek() {
                None | Some(b',') => {}
                Some(other) => bail!(
                    "cannot parse WWW-Authenticate {header:?}: unexpected {:?} after the parameter {name}",
                    char::from(other)
                ),
            }
        }
    }

    fn quoted(&mut self, header: &str) -> Result<String> {
        self.pos += 1;
        let mut value = Vec::new();
        loop {
            match self.peek() {
                None => bail!(
                    "cannot parse WWW-Authenticate {header:?}: a quoted string is never closed"
                ),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(String::from_utf8_lossy(&value).into_owned());
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b) => value.push(b),
                        None => bail!(
                            "cannot parse WWW-Authenticate {header:?}: it ends inside an escape"
                        ),
                    }
                    self.pos += 1;
                }
                Some(b) => {
                    value.push(b);
                    self.pos += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(scheme: &str, params: &[(&str, &str)]) -> Challenge {
        Challenge {
            scheme: scheme.to_owned(),
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            token68: None,
        }
    }

    #[test]
    fn table() {
        let cases: &[(&str, Vec<Challenge>)] = &[
            (
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:app:pull,push""#,
                vec![c(
                    "bearer",
                    &[
                        ("realm", "https://auth.example/token"),
                        ("service", "registry.example"),
                        ("scope", "repository:app:pull,push"),
                    ],
                )],
            ),
            (r#"bEaReR realm="r""#, vec![c("bearer", &[("realm", "r")])]),
            (
                r#"Bearer realm="a \"quoted\" \\ realm", error=insufficient_scope"#,
                vec![c(
                    "bearer",
                    &[
                        ("realm", r#"a "quoted" \ realm"#),
                        ("error", "insufficient_scope"),
                    ],
                )],
            ),
            (
                r#"Basic realm="Registry Realm", Bearer realm="https://t/token",scope="repository:a/b:pull,push""#,
                vec![
                    c("basic", &[("realm", "Registry Realm")]),
                    c(
                        "bearer",
                        &[
                            ("realm", "https://t/token"),
                            ("scope", "repository:a/b:pull,push"),
                        ],
                    ),
                ],
            ),
            (
                "  Bearer   Realm = \"r\" ,  ,SERVICE=s  ,  ",
                vec![c("bearer", &[("realm", "r"), ("service", "s")])],
            ),
            ("Basic", vec![c("basic", &[])]),
            (
                "Basic, Bearer realm=x",
                vec![c("basic", &[]), c("bearer", &[("realm", "x")])],
            ),
            (
                "Negotiate abc+/==, Basic realm=x",
                vec![
                    Challenge {
                        token68: Some("abc+/==".to_owned()),
                        ..c("negotiate", &[])
                    },
                    c("basic", &[("realm", "x")]),
                ],
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(&parse(header).unwrap(), expected, "{header}");
        }
        let parsed = parse(r#"Bearer realm="r",service="s""#).unwrap();
        assert_eq!(parsed[0].param("SERVICE"), Some("s"));
    }

    #[test]
    fn malformed() {
        for header in [
            "",
            "   ",
            r#"Bearer realm="never closed"#,
            r#"Bearer realm="ends in escape\"#,
            "Bearer a=1, realm=",
            "Bearer realm=a b",
            "Bearer =x",
            r#""Bearer" realm=x"#,
            "Bearer realm=x junk=",
        ] {
            assert!(parse(header).is_err(), "{header:?} should not parse");
        }
    }
}

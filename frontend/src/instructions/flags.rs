//! Builder flags (`--name[=value]`) of one instruction, checked against what it accepts.

use std::collections::BTreeMap;

use crate::error::ErrorKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlagType {
    Bool,
    String,
    Strings,
}

/// The parsed flags of one instruction.
#[derive(Debug, Default)]
pub(crate) struct Flags {
    known: BTreeMap<&'static str, FlagType>,
    values: BTreeMap<String, Vec<String>>,
}

impl Flags {
    /// Parses `raw` (as split off by the parser) against the accepted `known` flags.
    pub(crate) fn parse(
        instruction: &str,
        raw: &[String],
        known: &[(&'static str, FlagType)],
    ) -> Result<Self, ErrorKind> {
        let mut f = Flags {
            known: known.iter().copied().collect(),
            values: BTreeMap::new(),
        };
        for a in raw {
            if a == "--" {
                break;
            }
            let Some(body) = a.strip_prefix("--") else {
                return Err(ErrorKind::BadFlag(format!(
                    "arg should start with -- : {a}"
                )));
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(&ty) = f.known.get(name) else {
                let expected = if known.is_empty() {
                    "no flags".to_owned()
                } else {
                    known
                        .iter()
                        .map(|(n, _)| format!("--{n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(ErrorKind::UnknownFlag {
                    instruction: instruction.to_ascii_uppercase(),
                    flag: format!("--{name}"),
                    expected,
                });
            };
            let entry = f.values.entry(name.to_owned()).or_default();
            if !entry.is_empty() && ty != FlagType::Strings {
                return Err(ErrorKind::BadFlag(format!(
                    "duplicate flag specified: --{name}"
                )));
            }
            match ty {
                FlagType::Bool => match value {
                    Some("") => {
                        return Err(ErrorKind::BadFlag(format!(
                            "missing a value on flag: --{name}"
                        )));
                    }
                    None => entry.push("true".into()),
                    Some(v) if v.eq_ignore_ascii_case("true") => entry.push("true".into()),
                    Some(v) if v.eq_ignore_ascii_case("false") => entry.push("false".into()),
                    Some(v) => {
                        return Err(ErrorKind::BadFlag(format!(
                            "expecting boolean value for flag --{name}, not: {v}"
                        )));
                    }
                },
                FlagType::String | FlagType::Strings => match value {
                    None => {
                        return Err(ErrorKind::BadFlag(format!(
                            "missing a value on flag: --{name}"
                        )));
                    }
                    Some(v) => entry.push(v.to_owned()),
                },
            }
        }
        Ok(f)
    }

    /// A string flag's value, if given.
    pub(crate) fn string(&self, name: &str) -> Option<String> {
        self.values.get(name).and_then(|v| v.last().cloned())
    }

    /// A bool flag: `None` if not given.
    pub(crate) fn bool_opt(&self, name: &str) -> Option<bool> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(|v| v == "true")
    }

    /// A bool flag, false if not given.
    pub(crate) fn bool(&self, name: &str) -> bool {
        self.bool_opt(name).unwrap_or(false)
    }

    /// All values of a repeatable flag.
    pub(crate) fn strings(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let known = [("from", FlagType::String), ("link", FlagType::Bool)];
        let f = Flags::parse("COPY", &["--from=a".into(), "--link".into()], &known).expect("ok");
        assert_eq!(f.string("from").as_deref(), Some("a"));
        assert!(f.bool("link"));
        let e = Flags::parse("COPY", &["--form=a".into()], &known).expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "unknown flag: --form (`COPY` accepts --from, --link)"
        );
        let e = Flags::parse("COPY", &["--from".into()], &known).expect_err("no value");
        assert_eq!(e.to_string(), "missing a value on flag: --from");
    }
}

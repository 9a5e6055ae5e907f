//! `${…}` expansion in configuration and rule files.
//!
//! Expansion runs on the parsed YAML tree, string by string, so that an
//! expanded value can never change the structure of the file (a secret with a
//! `:` or a newline stays one string). Forms:
//!
//! | form | value |
//! |---|---|
//! | `${VAR}` | the variable; unset is an error naming it |
//! | `${VAR:-default}` | the variable when set and not empty, else `default` |
//! | `${VAR:+word}` | `word` when the variable is set and not empty, else empty |
//! | `${file:/path}` | the file's content, one trailing newline trimmed |
//! | `${credential:NAME}` | the file `NAME` in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`) |
//! | `$${` | a literal `${` |

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

/// Where variables come from. Production reads the process environment; tests
/// pass a map so that nothing global is mutated.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// What one expansion pass learnt besides the values themselves.
#[derive(Debug, Default)]
pub struct Expanded {
    /// Values that must be masked wherever text is shown (see [`crate::diag::Redactor`]).
    pub secrets: Vec<String>,
    /// Whole strings whose value came from outside the file (environment,
    /// file or credential), as opposed to text written in the file. A secret
    /// that is not among them is written in the file, which is worth a warning.
    pub external: Vec<String>,
}

/// An expansion failure, located by the caller.
#[derive(Debug, PartialEq, Eq)]
pub struct ExpandError {
    pub path: String,
    pub message: String,
}

/// Expand every string in `value`, in place. Errors are collected, one per
/// string, with the dotted path of that string.
pub fn expand_tree(
    value: &mut Value,
    env: &dyn Env,
    out: &mut Expanded,
    errors: &mut Vec<ExpandError>,
) {
    walk(value, String::new(), env, out, errors);
}

fn walk(
    value: &mut Value,
    path: String,
    env: &dyn Env,
    out: &mut Expanded,
    errors: &mut Vec<ExpandError>,
) {
    match value {
        Value::String(s) => {
            if s.contains('$') {
                match expand_str(s, env, out) {
                    Ok(v) => *s = v,
                    Err(message) => errors.push(ExpandError { path, message }),
                }
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, format!("{path}[{i}]"), env, out, errors);
            }
        }
        Value::Mapping(map) => {
            // Keys are strings too (`secrets: {"${EASEMOB_APPKEY}": …}`):
            // rebuild the mapping with expanded keys, keeping its order.
            let old = std::mem::take(map);
            for (mut k, mut v) in old {
                let key_text = match &k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                let child = if path.is_empty() {
                    key_text.clone()
                } else {
                    format!("{path}.{key_text}")
                };
                if let Value::String(s) = &mut k
                    && s.contains('$')
                {
                    match expand_str(s, env, out) {
                        Ok(e) => *s = e,
                        Err(message) => errors.push(ExpandError {
                            path: child.clone(),
                            message,
                        }),
                    }
                }
                walk(&mut v, child, env, out, errors);
                map.insert(k, v);
            }
        }
        Value::Tagged(t) => walk(&mut t.value, path, env, out, errors),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Does the variable name say that its value is a secret?
fn secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "SECRET",
        "TOKEN",
        "PASSWORD",
        "PASSWD",
        "KEY",
        "WEBHOOK",
        "CREDENTIAL",
    ]
    .iter()
    .any(|w| upper.contains(w))
}

/// Expand one string.
pub fn expand_str(input: &str, env: &dyn Env, out: &mut Expanded) -> Result<String, String> {
    let mut result = String::with_capacity(input.len());
    let mut rest = input;
    // True while everything appended so far came from outside the file.
    let mut all_external = true;
    let mut any_substitution = false;
    while let Some(pos) = rest.find('$') {
        let (before, after) = rest.split_at(pos);
        result.push_str(before);
        if !before.is_empty() {
            all_external = false;
        }
        if let Some(tail) = after.strip_prefix("$${") {
            result.push_str("${");
            all_external = false;
            rest = tail;
            continue;
        }
        let Some(body_start) = after.strip_prefix("${") else {
            result.push('$');
            all_external = false;
            rest = &after[1..];
            continue;
        };
        let Some(end) = body_start.find('}') else {
            return Err(format!("unterminated `${{` in {input:?}"));
        };
        let expr = &body_start[..end];
        rest = &body_start[end + 1..];
        any_substitution = true;
        let (value, external) = substitute(expr, env, out)?;
        all_external &= external;
        result.push_str(&value);
    }
    if !rest.is_empty() {
        all_external = false;
        result.push_str(rest);
    }
    if any_substitution && all_external && !result.is_empty() {
        out.external.push(result.clone());
    }
    Ok(result)
}

/// The value of one `${expr}` and whether it came from outside the file.
fn substitute(expr: &str, env: &dyn Env, out: &mut Expanded) -> Result<(String, bool), String> {
    if let Some(path) = expr.strip_prefix("file:") {
        let value = read_trimmed(Path::new(path)).map_err(|e| format!("${{file:{path}}}: {e}"))?;
        out.secrets.push(value.clone());
        return Ok((value, true));
    }
    if let Some(name) = expr.strip_prefix("credential:") {
        if name.is_empty() || name.contains('/') {
            return Err(format!(
                "${{credential:{name}}}: a credential name is a plain file name"
            ));
        }
        let dir = env.var("CREDENTIALS_DIRECTORY").ok_or_else(|| {
            format!(
                "${{credential:{name}}}: $CREDENTIALS_DIRECTORY is not set (systemd sets it for units with LoadCredential=)"
            )
        })?;
        let path = PathBuf::from(dir).join(name);
        let value = read_trimmed(&path).map_err(|e| format!("${{credential:{name}}}: {e}"))?;
        out.secrets.push(value.clone());
        return Ok((value, true));
    }
    let (name, op, word) = match expr.find(':') {
        Some(i) => {
            let op = expr.get(i..i + 2).unwrap_or(":");
            (&expr[..i], op, expr.get(i + 2..).unwrap_or(""))
        }
        None => (expr, "", ""),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("`${{{expr}}}` is not a valid variable reference"));
    }
    let value = env.var(name);
    let set = value.as_deref().is_some_and(|v| !v.is_empty());
    let result = match op {
        "" => match value {
            Some(v) => (v, true),
            None => return Err(format!("environment variable {name} is not set")),
        },
        ":-" => match value {
            Some(v) if set => (v, true),
            _ => (word.to_string(), false),
        },
        ":+" => {
            if set {
                (word.to_string(), false)
            } else {
                (String::new(), false)
            }
        }
        _ => {
            return Err(format!(
                "`${{{expr}}}`: unknown operator; use ${{VAR}}, ${{VAR:-default}} or ${{VAR:+word}}"
            ));
        }
    };
    if result.1 && secret_name(name) {
        out.secrets.push(result.0.clone());
    }
    Ok(result)
}

fn read_trimmed(path: &Path) -> Result<String, String> {
    let mut s = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expand(s: &str, e: &HashMap<String, String>) -> Result<String, String> {
        expand_str(s, e, &mut Expanded::default())
    }

    #[test]
    fn plain_and_default_forms() {
        let e = env(&[("HOST", "mail.example.com"), ("EMPTY", "")]);
        assert_eq!(expand("${HOST}:25", &e).unwrap(), "mail.example.com:25");
        assert_eq!(expand("${NOPE:-127.0.0.1}", &e).unwrap(), "127.0.0.1");
        assert_eq!(expand("${EMPTY:-fallback}", &e).unwrap(), "fallback");
        assert_eq!(expand("${HOST:-fallback}", &e).unwrap(), "mail.example.com");
        assert_eq!(expand("${HOST:+true}", &e).unwrap(), "true");
        assert_eq!(expand("${EMPTY:+true}", &e).unwrap(), "");
        assert_eq!(expand("${NOPE:+true}", &e).unwrap(), "");
        assert_eq!(expand("no dollars", &e).unwrap(), "no dollars");
        assert_eq!(expand("costs $5", &e).unwrap(), "costs $5");
        assert_eq!(expand("literal $${HOST}", &e).unwrap(), "literal ${HOST}");
    }

    #[test]
    fn unset_variable_is_an_error_naming_it() {
        let err = expand("Bearer ${AUDIT_TOKEN}", &env(&[])).unwrap_err();
        assert!(err.contains("AUDIT_TOKEN"), "{err}");
        assert!(err.contains("not set"), "{err}");
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(expand("${HOST", &env(&[])).is_err());
        assert!(expand("${HO ST}", &env(&[])).is_err());
        assert!(expand("${HOST:=x}", &env(&[("HOST", "a")])).is_err());
    }

    #[test]
    fn file_and_credential_are_read_trimmed_and_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("easemob"), "s3cr3t-value\n").unwrap();
        let e = env(&[("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())]);
        let mut out = Expanded::default();
        let file_ref = format!("${{file:{}}}", dir.path().join("easemob").display());
        assert_eq!(expand_str(&file_ref, &e, &mut out).unwrap(), "s3cr3t-value");
        assert_eq!(
            expand_str("${credential:easemob}", &e, &mut out).unwrap(),
            "s3cr3t-value"
        );
        assert!(out.secrets.iter().all(|s| s == "s3cr3t-value"));
        assert_eq!(out.secrets.len(), 2);
        assert!(
            expand("${credential:missing}", &e)
                .unwrap_err()
                .contains("missing")
        );
        assert!(
            expand("${credential:x}", &env(&[]))
                .unwrap_err()
                .contains("CREDENTIALS_DIRECTORY")
        );
    }

    #[test]
    fn secret_looking_variables_are_remembered_and_external_values_marked() {
        let e = env(&[("EASEMOB_SECRET", "abcdef123"), ("SMTP_HOST", "mx")]);
        let mut out = Expanded::default();
        expand_str("${EASEMOB_SECRET}", &e, &mut out).unwrap();
        expand_str("${SMTP_HOST}", &e, &mut out).unwrap();
        expand_str("${MISSING_SECRET:-written-in-file}", &e, &mut out).unwrap();
        assert_eq!(out.secrets, vec!["abcdef123".to_string()]);
        assert_eq!(
            out.external,
            vec!["abcdef123".to_string(), "mx".to_string()]
        );
    }

    #[test]
    fn mapping_keys_are_expanded_too() {
        let mut v: Value =
            serde_yaml::from_str("secrets:\n  \"${APPKEY}\": [x]\n  \"*\": []\n").unwrap();
        let mut errors = Vec::new();
        expand_tree(
            &mut v,
            &env(&[("APPKEY", "org#app")]),
            &mut Expanded::default(),
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let keys: Vec<_> = v["secrets"]
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(keys, ["org#app", "*"]);
    }

    #[test]
    fn tree_errors_carry_the_path_and_all_are_collected() {
        let mut v: Value =
            serde_yaml::from_str("a: ${ONE}\nb:\n  - ok\n  - ${TWO}\nc: {d: \"${THREE:-3}\"}\n")
                .unwrap();
        let mut errors = Vec::new();
        expand_tree(&mut v, &env(&[]), &mut Expanded::default(), &mut errors);
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "b[1]"]);
        assert_eq!(v["c"]["d"], Value::String("3".into()));
    }
}

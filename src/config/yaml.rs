//! Reading YAML the way every file of easehook is read: `${…}`
//! expansion first, then typed sections whose errors carry
//! `file: line:column: message`.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::expand::{self, Env, Expanded};
use crate::diag::Diagnostics;

/// Read a YAML file and `${…}`-expand it, reporting problems against `file`.
/// Shared by the config file and rule files. Returns `None` when the file
/// cannot be used at all.
pub(crate) fn read_yaml(
    path: &Path,
    env: &dyn Env,
    expanded: &mut Expanded,
    diags: &mut Diagnostics,
) -> Option<Value> {
    let file = path.display();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            diags.push(&file, "", format!("cannot read: {e}"));
            return None;
        }
    };
    let mut value: Value = match serde_yaml::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            let location = e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_default();
            diags.push(
                &file,
                location,
                format!("invalid YAML: {}", strip_location(&e.to_string())),
            );
            return None;
        }
    };
    let mut errors = Vec::new();
    expand::expand_tree(&mut value, env, expanded, &mut errors);
    for e in errors {
        diags.push(&file, e.path, e.message);
    }
    Some(value)
}

/// serde_yaml appends " at line L column C" to messages; the location is
/// reported separately.
pub(crate) fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Deserialize a mapping into `T` one key at a time, so that a problem in one
/// key does not hide problems in the others. `T` must accept every key alone
/// (all its fields have defaults). Each problem is reported at its dotted path
/// under `prefix`.
pub(crate) fn deserialize_keys<T: DeserializeOwned + Default>(
    map: serde_yaml::Mapping,
    file: &str,
    prefix: &str,
    diags: &mut Diagnostics,
) -> T {
    let mut good = serde_yaml::Mapping::new();
    for (k, v) in map {
        let mut single = serde_yaml::Mapping::new();
        single.insert(k.clone(), v.clone());
        match serde_path_to_error::deserialize::<_, T>(Value::Mapping(single)) {
            Ok(_) => {
                good.insert(k, v);
            }
            Err(e) => {
                let inner = e.path().to_string();
                let key = k
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{k:?}"));
                let location = match (prefix.is_empty(), inner == "." || inner.is_empty()) {
                    (true, true) => String::new(),
                    (true, false) => inner,
                    (false, true) => prefix.to_string(),
                    (false, false) => format!("{prefix}.{inner}"),
                };
                let message = strip_location(&e.into_inner().to_string());
                // An unknown key is reported by serde at the parent's path.
                let location = if message.starts_with("unknown field") && location.is_empty() {
                    key
                } else {
                    location
                };
                diags.push(file, location, message);
            }
        }
    }
    match serde_path_to_error::deserialize::<_, T>(Value::Mapping(good)) {
        Ok(t) => t,
        Err(e) => {
            diags.push(
                file,
                e.path().to_string(),
                strip_location(&e.into_inner().to_string()),
            );
            T::default()
        }
    }
}

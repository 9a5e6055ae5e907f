//! `easehook schema config|rules` (SPEC §14): JSON Schemas generated from
//! the loader's types. Every shipped file validates against them, the
//! copies in `schema/` are what the binary prints, and a misspelt key does
//! not validate.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn printed(which: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_easehook"))
        .args(["schema", which])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn problems(schema: &Value, instance: &Value) -> Vec<String> {
    let validator = jsonschema::validator_for(schema).expect("a valid schema");
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

#[test]
fn every_shipped_file_validates_against_the_printed_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = printed("config");
    let rules = printed("rules");
    assert_eq!(
        config["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    // Every field is described.
    for field in [
        "listen",
        "secrets",
        "dedup_window",
        "store",
        "delivery",
        "smtp",
        "presend",
    ] {
        let d = config["properties"][field]["description"]
            .as_str()
            .unwrap_or("");
        assert!(!d.is_empty(), "config.{field} has no description");
    }
    for file in ["easehook.yaml", "systemd/easehook.yaml"] {
        let p = problems(&config, &yaml(&root.join(file)));
        assert!(p.is_empty(), "{file}: {p:?}");
        let first = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            first.contains("# yaml-language-server: $schema="),
            "{file} names its schema"
        );
    }
    let mut n = 0;
    for entry in std::fs::read_dir(root.join("rules")).unwrap() {
        let path = entry.unwrap().path();
        let p = problems(&rules, &yaml(&path));
        assert!(p.is_empty(), "{}: {p:?}", path.display());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# yaml-language-server: $schema=../schema/rules.schema.json"));
        n += 1;
    }
    assert!(n >= 4);
    // The copies beside the files are what the binary prints.
    for (file, schema) in [
        ("schema/easehook.schema.json", &config),
        ("schema/rules.schema.json", &rules),
    ] {
        let kept: Value =
            serde_json::from_str(&std::fs::read_to_string(root.join(file)).unwrap()).unwrap();
        assert_eq!(
            &kept, schema,
            "{file} differs from `easehook schema`: regenerate it"
        );
    }
}

#[test]
fn misspelt_keys_and_wrong_shapes_do_not_validate() {
    let config = printed("config");
    let rules = printed("rules");
    let bad: Value = serde_yaml::from_str("listn: 127.0.0.1:8080\nsecrets: {a: b}\n").unwrap();
    assert!(!problems(&config, &bad).is_empty());
    let bad: Value = serde_yaml::from_str("smtp: {default: {host: x, tls: sometimes}}\n").unwrap();
    assert!(!problems(&config, &bad).is_empty());
    let ok: Value = serde_yaml::from_str(
        "smtp: {default: {host: x, tls: '${SMTP_TLS:-starttls}', port: '${P:-587}'}}\n",
    )
    .unwrap();
    assert_eq!(problems(&config, &ok), Vec::<String>::new());
    for text in [
        "actions: {a: {type: email, to: x, subject: s, txet: t}}",
        "actions: {a: {type: telegram, text: x}}",
        "rules: [{name: r, when: {event: {regexp: x}}, actions: []}]",
        "rules: [{name: r, digest: {window: 1m, max: 3}, actions: []}]",
        "tests: [{event: {}, rule: [x]}]",
    ] {
        let bad: Value = serde_yaml::from_str(text).unwrap();
        assert!(!problems(&rules, &bad).is_empty(), "{text} validated");
    }
    let ok: Value = serde_yaml::from_str(
        "actions: {a: {type: slack, enabled: '${X:+true}', webhook_url: u, text: t, rate_limit: 5/s}}\n\
         rules: [{name: r, when: {event: roster:ban, from: [a, {not: {regex: 'b.*'}}], payload.x: {exists: true}}, \
         threshold: {count: 5, within: 1h, by: [to], distinct: from}, actions: [a]}]\n\
         tests: [{event: {file: x.json}, rules: [r], expect: {a.text: {contains: x}}}]",
    )
    .unwrap();
    assert_eq!(problems(&rules, &ok), Vec::<String>::new());
}

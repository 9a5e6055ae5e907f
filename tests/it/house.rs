//! The house keeps its shape: every `crate::…` path in `src/` runs down the
//! module order written in docs/ARCHITECTURE.md, and every relative link of
//! the manual (README, its Chinese twin, the chapters under docs/) leads to
//! a file that is there, at a heading that is there.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The floors of docs/ARCHITECTURE.md's "module order" block, top first:
/// each module with the number of its floor (0 is the top).
fn module_order() -> HashMap<String, usize> {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let start = doc
        .find("<!-- module order -->")
        .expect("docs/ARCHITECTURE.md has a `<!-- module order -->` block");
    let block = &doc[start..];
    let body = block
        .split("```")
        .nth(1)
        .expect("the module order is a fenced block");
    let mut floors = HashMap::new();
    for (floor, line) in body.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        // `floor name: module module …`; the text after `—` explains.
        let line = line.split('—').next().unwrap();
        let modules = line.split_once(':').map_or(line, |(_, m)| m);
        for m in modules.split_whitespace() {
            assert!(
                floors.insert(m.to_string(), floor).is_none(),
                "{m} is on two floors of the module order"
            );
        }
    }
    floors
}

/// A file's module path: `src/store/sqlite/claims.rs` → `store::sqlite::claims`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root().join("src")).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The module of the order that `path` (segments from the crate root)
/// belongs to: the longest listed prefix, written `a/b`.
fn room(order: &HashMap<String, usize>, path: &[String]) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("/"))
        .find(|p| order.contains_key(p))
}

/// The first segments of each path named after `crate::` or `super::` in
/// one line: `crate::{a::X, b}` names `a` and `b`.
fn paths_in(line: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", here[..here.len().saturating_sub(1)].to_vec()),
    ] {
        let mut rest = line;
        while let Some(i) = rest.find(prefix) {
            // `easehook::crate::` is no path; `$crate::` of macros is.
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut heads = Vec::new();
            if let Some(inner) = rest.strip_prefix('{') {
                let mut depth = 0;
                let mut item = String::new();
                for c in inner.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => heads.push(std::mem::take(&mut item)),
                        _ => item.push(c),
                    }
                }
                heads.push(item);
            } else {
                heads.push(rest.to_string());
            }
            for h in heads {
                let segs: Vec<String> = h
                    .trim()
                    .split("::")
                    .map(|s| {
                        s.chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect()
                    })
                    .take_while(|s: &String| !s.is_empty() && s != "self")
                    .collect();
                if !segs.is_empty() {
                    let mut p = base.clone();
                    p.extend(segs);
                    found.push(p);
                }
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every import that runs up (or across) the written order, as
/// `file:line: a imports b`. Tests (`tests.rs`, and a file's
/// `#[cfg(test)]` tail) may reach anywhere.
fn upward_imports(order: &HashMap<String, usize>) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if name == "main.rs" || name == "tests.rs" {
            continue;
        }
        let here = module_of(&file);
        let rel = file.strip_prefix(root()).unwrap().display().to_string();
        let Some(from) = room(order, &here).or_else(|| here.is_empty().then(|| "lib".into()))
        else {
            wrong.push(format!(
                "{rel}: module {} is not in the order",
                here.join("::")
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            let code = line.split("//").next().unwrap();
            for path in paths_in(code, &here) {
                let to = room(order, &path).unwrap_or_else(|| "lib".into());
                if to == from || order.get(&to).is_none() {
                    continue;
                }
                if order[&to] <= order[&from] {
                    wrong.push(format!("{rel}:{}: {from} imports {to}", n + 1));
                }
            }
        }
    }
    wrong
}

#[test]
fn every_import_runs_down_the_written_module_order() {
    let order = module_order();
    assert!(order.contains_key("lib") && order.contains_key("store"));
    let wrong = upward_imports(&order);
    assert!(
        wrong.is_empty(),
        "imports against docs/ARCHITECTURE.md's module order:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn an_import_up_the_order_is_caught() {
    // The check itself, on paths a module might write.
    let order: HashMap<String, usize> = [("app", 0), ("store", 1), ("store/sqlite", 0), ("lib", 2)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let here = vec!["store".to_string()];
    let paths = paths_in("use crate::{app::App, store::Store}; super::x", &here);
    let rooms: Vec<_> = paths.iter().map(|p| room(&order, p)).collect();
    assert_eq!(rooms, [Some("app".into()), Some("store".into()), None]);
    let sqlite = vec!["store".to_string(), "sqlite".to_string()];
    assert_eq!(
        room(&order, &paths_in("use super::Claimed;", &sqlite)[0]),
        Some("store".into())
    );
    assert!(paths_in("easehook::crate::x", &here).is_empty());
}

/// GitHub's anchor of a heading: lower case, spaces to `-`, punctuation
/// other than `-` and `_` dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        if let Some(h) = line.strip_prefix('#') {
            let s = slug(h.trim_start_matches('#'));
            let n = seen.entry(s.clone()).or_default();
            out.insert(if *n == 0 {
                s.clone()
            } else {
                format!("{s}-{n}")
            });
            *n += 1;
        }
    }
    out
}

/// The targets of `[text](target)` links outside code.
fn links(markdown: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (n, line) in markdown.lines().enumerate() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            if let Some(end) = rest.find(')') {
                out.push((n + 1, rest[..end].trim().to_string()));
            }
        }
    }
    out
}

fn manual() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md"), root().join("README.zh-CN.md")];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            pages.push(p);
        }
    }
    pages.sort();
    pages
}

/// Every broken relative link of the manual, as `file:line: target`.
fn broken_links(pages: &[PathBuf]) -> Vec<String> {
    let mut broken = Vec::new();
    for page in pages {
        let text = std::fs::read_to_string(page).unwrap();
        let rel = page
            .strip_prefix(root())
            .unwrap_or(page)
            .display()
            .to_string();
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let path = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !path.exists() {
                broken.push(format!("{rel}:{line}: {target} (no such file)"));
                continue;
            }
            if !anchor.is_empty() && path.extension().is_some_and(|x| x == "md") {
                let there = std::fs::read_to_string(&path).unwrap();
                if !anchors(&there).contains(anchor) {
                    broken.push(format!("{rel}:{line}: {target} (no such heading)"));
                }
            }
        }
    }
    broken
}

#[test]
fn every_link_of_the_manual_leads_somewhere() {
    let broken = broken_links(&manual());
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn both_front_doors_link_every_chapter() {
    for readme in ["README.md", "README.zh-CN.md"] {
        let text = std::fs::read_to_string(root().join(readme)).unwrap();
        let linked: BTreeSet<String> = links(&text)
            .into_iter()
            .map(|(_, t)| t.split('#').next().unwrap().to_string())
            .collect();
        for page in manual() {
            let rel = page.strip_prefix(root()).unwrap().display().to_string();
            if rel.starts_with("docs/") && !linked.contains(&rel) {
                panic!("{readme} does not link the chapter {rel}");
            }
        }
    }
}

#[test]
fn a_missing_chapter_or_heading_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("a.md");
    std::fs::write(dir.path().join("b.md"), "# Hello, world\n## Again\n").unwrap();
    std::fs::write(
        &page,
        "[ok](b.md#hello-world) [gone](c.md) [nohead](b.md#nope)\n```\n[code](x.md)\n```\n",
    )
    .unwrap();
    let broken = broken_links(&[page]);
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(broken[0].ends_with("c.md (no such file)"));
    assert!(broken[1].ends_with("b.md#nope (no such heading)"));
}

/// README.md is the front door, the reference lives in the chapters: a
/// README that grows back into a manual fails here.
#[test]
fn the_front_door_stays_short() {
    for readme in ["README.md", "README.zh-CN.md"] {
        let lines = std::fs::read_to_string(root().join(readme))
            .unwrap()
            .lines()
            .count();
        assert!(
            lines <= 330,
            "{readme} has {lines} lines; move reference into docs/"
        );
    }
}

//! Word lists for moderation (SPEC §16): every list of a set compiled into
//! one multi-pattern automaton (`aho-corasick`) at load, so that a message
//! is read once whatever the number of words.
//!
//! Words and texts are matched on a **normalized** copy: each character
//! goes through Unicode NFKC (full-width letters and digits become ASCII)
//! and lower-casing, and every character that is neither a letter nor a
//! digit (whitespace, punctuation, symbols) is left out, so that `加 微 信`,
//! `加-微-信` and `ＦＵＣＫ` hit `加微信` and `fuck`. For a text with hits,
//! each normalized byte is mapped back to the original character it came
//! from, so a hit is reported, and masked, as the span of the original text
//! it covers, separators inside it included.
//!
//! A list may name `allow` phrases: a hit that lies inside an occurrence of
//! one of its list's allowed phrases is no hit (`色情` does not hit in
//! `白色情人节`). Allowed phrases of all lists share a second automaton.

use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use unicode_normalization::UnicodeNormalization;

/// One list as configured: its name, its words and its allowed phrases.
#[derive(Debug, Clone, Default)]
pub struct ListSource {
    pub name: String,
    pub words: Vec<String>,
    pub allow: Vec<String>,
}

/// Which lists of a [`WordLists`] to look for, by index.
pub type ListId = usize;

/// A word found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The list the word is on.
    pub list: ListId,
    /// The word as the list writes it.
    pub word: String,
    /// The bytes of the original text the hit covers (whole characters).
    pub span: Range<usize>,
}

/// Every list of a configuration, compiled.
pub struct WordLists {
    names: Vec<String>,
    counts: Vec<usize>,
    words: Automaton,
    allow: Option<Automaton>,
}

/// An automaton over normalized patterns, with the list each pattern is
/// of and the pattern as written.
struct Automaton {
    ac: AhoCorasick,
    list: Vec<ListId>,
    written: Vec<String>,
}

impl Automaton {
    fn build(patterns: Vec<(ListId, String, String)>) -> Result<Self, String> {
        // The contiguous NFA: a list of 100,000 words compiles in a
        // fraction of a second and takes a few megabytes, where a DFA
        // takes seconds and many times the memory for a search that is
        // only a little faster.
        let ac = AhoCorasickBuilder::new()
            // Overlapping search: a hit inside an allowed phrase must not
            // hide another one beside it.
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .build(patterns.iter().map(|(_, n, _)| n.as_bytes()))
            .map_err(|e| format!("cannot compile the word lists: {e}"))?;
        let (list, written) = patterns.into_iter().map(|(l, _, w)| (l, w)).unzip();
        Ok(Self { ac, list, written })
    }
}

/// Read a word list file: one word or phrase a line, lines starting with
/// `#` and blank lines skipped, surrounding whitespace trimmed.
pub fn read_list(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Whether `c`, once normalized, is a separator: neither letter nor digit.
fn is_separator(c: char) -> bool {
    !c.is_alphanumeric()
}

/// The normalized form of a word or a text (see the module's docs).
pub fn normalize(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        push_normalized(c, |n| out.push(n));
    }
    out
}

/// Push the normalized characters of `c` (none for a separator).
#[inline]
fn push_normalized(c: char, mut push: impl FnMut(char)) {
    if c.is_ascii() {
        if c.is_ascii_alphanumeric() {
            push(c.to_ascii_lowercase());
        }
        return;
    }
    // CJK Unified Ideographs and Hangul syllables are letters that NFKC
    // and case folding leave as they are: most of a Chinese text skips the
    // normalizer.
    if ('\u{4E00}'..='\u{9FFF}').contains(&c) || ('\u{AC00}'..='\u{D7A3}').contains(&c) {
        push(c);
        return;
    }
    // NFKC of one character: its compatibility decomposition, composed
    // again. A decomposition of one character (full-width letters, digits
    // and punctuation, most of what a chat text holds beside ideographs)
    // composes to itself, so the composer, which sets up buffers for each
    // call, runs only for the others.
    let mut first = None;
    let mut more = false;
    unicode_normalization::char::decompose_compatible(c, |d| {
        if first.is_none() {
            first = Some(d);
        } else {
            more = true;
        }
    });
    if more {
        for n in std::iter::once(c).nfkc() {
            push_folded(n, &mut push);
        }
    } else if let Some(n) = first {
        push_folded(n, &mut push);
    }
}

/// Push `n`, lower-cased, unless it is a separator.
#[inline]
fn push_folded(n: char, push: &mut impl FnMut(char)) {
    if is_separator(n) {
        return;
    }
    for l in n.to_lowercase() {
        push(l);
    }
}

/// The normalized text's byte ranges mapped back to the original text.
/// Built only for a text with hits: most texts have none, and the map
/// costs more than normalizing.
struct Spans {
    /// For each normalized byte: the original character's start, and (in
    /// `ends`) its end.
    starts: Vec<u32>,
    ends: Vec<u32>,
}

impl Spans {
    fn of(original: &str) -> Self {
        let mut starts = Vec::with_capacity(original.len());
        let mut ends = Vec::with_capacity(original.len());
        for (at, c) in original.char_indices() {
            let end = (at + c.len_utf8()) as u32;
            push_normalized(c, |n| {
                for _ in 0..n.len_utf8() {
                    starts.push(at as u32);
                    ends.push(end);
                }
            });
        }
        Self { starts, ends }
    }

    /// The original span of the normalized bytes `r` (not empty).
    fn original(&self, r: Range<usize>) -> Range<usize> {
        self.starts[r.start] as usize..self.ends[r.end - 1] as usize
    }
}

impl WordLists {
    /// Compile `lists`. Words and phrases that normalize to nothing (only
    /// separators) are left out; a list left without words is an error, as
    /// is a repeated list name.
    pub fn build(lists: &[ListSource]) -> Result<Self, String> {
        let mut words = Vec::new();
        let mut allow = Vec::new();
        let mut counts = Vec::with_capacity(lists.len());
        let mut names: Vec<String> = Vec::with_capacity(lists.len());
        for (id, list) in lists.iter().enumerate() {
            if names.contains(&list.name) {
                return Err(format!("word list {:?} is defined twice", list.name));
            }
            names.push(list.name.clone());
            let before = words.len();
            for w in &list.words {
                let n = normalize(w);
                if !n.is_empty() {
                    words.push((id, n, w.clone()));
                }
            }
            if words.len() == before {
                return Err(format!("word list {:?} has no words", list.name));
            }
            counts.push(words.len() - before);
            for a in &list.allow {
                let n = normalize(a);
                if !n.is_empty() {
                    allow.push((id, n, a.clone()));
                }
            }
        }
        let allow = if allow.is_empty() {
            None
        } else {
            Some(Automaton::build(allow)?)
        };
        let words = if words.is_empty() {
            // No lists at all: an automaton that never matches.
            Automaton::build(Vec::new())?
        } else {
            Automaton::build(words)?
        };
        Ok(Self {
            names,
            counts,
            words,
            allow,
        })
    }

    /// The index of the list called `name`.
    pub fn id(&self, name: &str) -> Option<ListId> {
        self.names.iter().position(|n| n == name)
    }

    /// The lists' names and how many words each holds, in order.
    pub fn counts(&self) -> impl Iterator<Item = (&str, usize)> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.counts.iter().copied())
    }

    /// The hits of the lists `of` in `text`, in the order of the text.
    /// Hits may overlap (`加微信` and `微信` both on a list): a mask covers
    /// them all.
    pub fn hits(&self, text: &str, of: &[ListId]) -> Vec<Hit> {
        if of.is_empty() || text.is_empty() {
            return Vec::new();
        }
        self.scan(text).hits(self, of)
    }

    /// Every list's hits in `text`, found in one pass of the automaton
    /// over one normalized copy: an evaluation scans a text once however
    /// many rules look for words in it.
    pub fn scan(&self, text: &str) -> Scan {
        let norm = normalize(text);
        let mut found: Vec<(ListId, usize, Range<usize>)> = self
            .words
            .ac
            .find_overlapping_iter(norm.as_bytes())
            .map(|m| {
                let p = m.pattern().as_usize();
                (self.words.list[p], p, m.range())
            })
            .collect();
        if found.is_empty() {
            return Scan { found };
        }
        if let Some(allow) = &self.allow {
            let allowed: Vec<(ListId, Range<usize>)> = allow
                .ac
                .find_overlapping_iter(norm.as_bytes())
                .map(|m| (allow.list[m.pattern().as_usize()], m.range()))
                .collect();
            if !allowed.is_empty() {
                found.retain(|(list, _, r)| {
                    !allowed
                        .iter()
                        .any(|(l, a)| l == list && a.start <= r.start && r.end <= a.end)
                });
            }
        }
        if !found.is_empty() {
            let spans = Spans::of(text);
            for (_, _, r) in &mut found {
                *r = spans.original(r.clone());
            }
            found.sort_by_key(|(_, _, r)| (r.start, r.end));
        }
        Scan { found }
    }
}

/// One text's hits of every list (see [`WordLists::scan`]).
pub struct Scan {
    /// List, pattern and the span of the original text, in the text's
    /// order.
    found: Vec<(ListId, usize, Range<usize>)>,
}

impl Scan {
    /// The hits of the lists `of`, in the order of the text.
    pub fn hits(&self, lists: &WordLists, of: &[ListId]) -> Vec<Hit> {
        self.found
            .iter()
            .filter(|(list, _, _)| of.contains(list))
            .map(|(list, p, r)| Hit {
                list: *list,
                word: lists.words.written[*p].clone(),
                span: r.clone(),
            })
            .collect()
    }

    /// Whether any of the lists `of` hits.
    pub fn hits_any(&self, of: &[ListId]) -> bool {
        self.found.iter().any(|(list, _, _)| of.contains(list))
    }
}

/// `text` with every character of every hit's span replaced by `mask`;
/// the rest of the text as it was.
pub fn mask(text: &str, hits: &[Hit], mask: &str) -> String {
    let mut spans: Vec<Range<usize>> = hits.iter().map(|h| h.span.clone()).collect();
    spans.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for s in spans {
        let start = s.start.max(at);
        if start >= s.end {
            continue;
        }
        out.push_str(&text[at..start]);
        for _ in text[start..s.end].chars() {
            out.push_str(mask);
        }
        at = s.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(sources: &[(&str, &[&str], &[&str])]) -> WordLists {
        WordLists::build(
            &sources
                .iter()
                .map(|(name, words, allow)| ListSource {
                    name: name.to_string(),
                    words: words.iter().map(|w| w.to_string()).collect(),
                    allow: allow.iter().map(|w| w.to_string()).collect(),
                })
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    fn masked(w: &WordLists, text: &str) -> String {
        let all: Vec<ListId> = (0..w.names.len()).collect();
        mask(text, &w.hits(text, &all), "*")
    }

    #[test]
    fn separators_width_and_case_do_not_hide_a_word() {
        let w = lists(&[("contact", &["加微信", "fuck"], &[])]);
        for text in [
            "加 微 信",
            "加-微-信",
            "加微信",
            "ＦＵＣＫ",
            "F.u.c.k",
            "f u c k",
        ] {
            assert_eq!(w.hits(text, &[0]).len(), 1, "{text}");
        }
        assert!(w.hits("加个好友", &[0]).is_empty());
        assert!(w.hits("fun", &[0]).is_empty());
    }

    #[test]
    fn every_character_normalizes_as_the_composer_says() {
        // The fast paths (ASCII, ideographs, one-character decompositions)
        // must give exactly what NFKC and lower-casing give.
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            let mut fast = String::new();
            push_normalized(c, |n| fast.push(n));
            let composed: String = std::iter::once(c)
                .nfkc()
                .filter(|n| !is_separator(*n))
                .flat_map(char::to_lowercase)
                .collect();
            assert_eq!(fast, composed, "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn a_hit_after_characters_that_normalize_to_several_maps_back() {
        // `㎏` is `kg` and `ﬁ` is `fi`: one original character, two
        // normalized bytes; the span after them is still the original's.
        let w = lists(&[("abuse", &["傻逼"], &[])]);
        assert_eq!(masked(&w, "㎏ﬁ傻逼"), "㎏ﬁ**");
        assert_eq!(w.hits("ﬁ 傻-逼", &[0])[0].span, "ﬁ ".len().."ﬁ 傻-逼".len());
    }

    #[test]
    fn a_mask_covers_the_original_span_character_for_character() {
        let w = lists(&[("abuse", &["傻逼", "fuck"], &[])]);
        assert_eq!(masked(&w, "你个傻 逼!"), "你个***!");
        assert_eq!(masked(&w, "ＦＵＣＫ you"), "**** you");
        assert_eq!(masked(&w, "oh f-u-c-k, no"), "oh *******, no");
        assert_eq!(masked(&w, "nothing here"), "nothing here");
    }

    #[test]
    fn overlapping_hits_are_all_masked() {
        let w = lists(&[("contact", &["加微信", "微信号"], &[])]);
        let hits = w.hits("加微信号", &[0]);
        assert_eq!(hits.len(), 2);
        assert_eq!(masked(&w, "请加微信号码"), "请****码");
    }

    #[test]
    fn no_hit_inside_an_allowed_phrase_and_a_hit_beside_one() {
        let w = lists(&[("adult", &["色情"], &["白色情人节"])]);
        assert!(w.hits("白色情人节快乐", &[0]).is_empty());
        let hits = w.hits("色情白色情人节", &[0]);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].span, 0.."色情".len());
        assert_eq!(masked(&w, "色情白色情人节"), "**白色情人节");
    }

    #[test]
    fn allowed_phrases_are_per_list_and_only_the_lists_asked_for_hit() {
        let w = lists(&[
            ("adult", &["色情"], &["白色情人节"]),
            ("strict", &["色情"], &[]),
        ]);
        assert!(w.hits("白色情人节", &[0]).is_empty());
        assert_eq!(w.hits("白色情人节", &[1]).len(), 1);
        assert_eq!(w.hits("白色情人节", &[0, 1]).len(), 1);
        assert!(w.hits("色情", &[]).is_empty());
        assert_eq!(w.id("strict"), Some(1));
        assert_eq!(w.id("nope"), None);
    }

    #[test]
    fn lists_are_read_and_counted() {
        let words = read_list("# contact ads\n加微信\n\n  vx  \n# end\n");
        assert_eq!(words, ["加微信", "vx"]);
        let w = lists(&[("a", &["x", "!!!"], &[]), ("b", &["y"], &[])]);
        assert_eq!(w.counts().collect::<Vec<_>>(), [("a", 1), ("b", 1)]);
    }

    #[test]
    fn an_empty_or_repeated_list_is_refused() {
        let empty = ListSource {
            name: "e".into(),
            words: vec!["  ".into(), "--".into()],
            allow: vec![],
        };
        assert!(
            WordLists::build(&[empty])
                .err()
                .unwrap()
                .contains("no words")
        );
        let one = ListSource {
            name: "a".into(),
            words: vec!["x".into()],
            allow: vec![],
        };
        let err = WordLists::build(&[one.clone(), one]).err().unwrap();
        assert!(err.contains("defined twice"), "{err}");
    }

    #[test]
    fn text_that_is_not_words_is_safe() {
        let w = lists(&[("a", &["a.*b", "(x"], &[])]);
        // Words are words, not patterns: a regex-looking word is its letters.
        assert_eq!(w.hits("ab", &[0]).len(), 1);
        assert!(w.hits("", &[0]).is_empty());
        assert!(w.hits("\u{0}\u{FFFD}🙂", &[0]).is_empty());
        let long = "好".repeat(100_000);
        assert!(w.hits(&long, &[0]).is_empty());
    }
}

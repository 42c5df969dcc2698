//! The map stays true: every path a document or a code comment names exists, every
//! section it cites exists, and nothing cites a file outside the repository
//! (docs/ARCHITECTURE.md "Where is X").
//!
//! Documents are the Markdown files of the repository; code comments are those of
//! `src/`, `tests/`, `bench/src/` and `fuzz/`, and the client libraries' sources
//! (`clients/js/index.js`, `clients/python/`) are read whole. A path counts when it starts at the
//! repository's root (`src/…`, `tests/…`, `docs/…`, `redis/…`, `static/…`, `clients/…`,
//! `scripts/…`, `bench/…`, `fuzz/…`, `.ci/…`) or, in backticks and ending in `.rs`,
//! when it is relative to `src/` or to the file's own folder. A section counts when
//! it is `PROTOCOL.md §N` (also `PROTOCOL §N`, `ARCHITECTURE.md §N`) or a quoted
//! heading after a document's name (`docs/OPERATIONS.md "Metrics"`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files under `dir` (relative to the root) whose name ends with `ext`, skipping
/// build output and installed packages.
fn files(dir: &str, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(root().join(dir)) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if path.is_dir() {
            if !["target", "node_modules", ".git", "corpus", "artifacts"].contains(&name.as_str()) {
                files(&format!("{dir}/{name}"), ext, out);
            }
        } else if name.ends_with(ext) {
            out.push(PathBuf::from(format!("{dir}/{name}")));
        }
    }
}

fn documents() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("README.md")];
    for dir in ["docs", "bench", "clients", "redis", "tests", "static", "scripts"] {
        files(dir, ".md", &mut out);
    }
    out
}

fn sources() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["src", "tests", "bench/src", "fuzz/fuzz_targets"] {
        files(dir, ".rs", &mut out);
    }
    // The client libraries cite the protocol too (their whole text is read).
    files("clients/js", "index.js", &mut out);
    files("clients/python", ".py", &mut out);
    out.push(PathBuf::from("Cargo.toml"));
    out
}

/// The comment text of a Rust or TOML file (what follows `//`, `//!`, `///` or `#`
/// on each line), else the text.
fn prose(file: &Path, text: &str) -> String {
    if file.extension().is_some_and(|e| e == "rs" || e == "toml") {
        let marker = if file.extension().is_some_and(|e| e == "toml") {
            "#"
        } else {
            "//"
        };
        text.lines()
            .filter_map(|l| {
                l.find(marker)
                    .map(|i| l[i + marker.len()..].trim_start_matches(['/', '!']))
            })
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        text.to_string()
    }
}

const ROOTS: [&str; 10] = [
    "src/", "tests/", "docs/", "redis/", "static/", "clients/", "scripts/", "bench/", "fuzz/", ".ci/",
];

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_./{},-*".contains(c)
}

/// `a/{b,c}.rs` → `a/b.rs`, `a/c.rs` (one brace group).
fn expand(path: &str) -> Vec<String> {
    match (path.find('{'), path.find('}')) {
        (Some(open), Some(close)) if open < close => path[open + 1..close]
            .split(',')
            .map(|part| format!("{}{}{}", &path[..open], part, &path[close + 1..]))
            .collect(),
        _ => vec![path.to_string()],
    }
}

/// Paths starting at the root that `text` names.
fn rooted_paths(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for start in ROOTS {
        let mut from = 0;
        while let Some(i) = text[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            // Only where a path begins: not inside a longer word or path (`x/src/`).
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || "_/.-".contains(c)) {
                continue;
            }
            let raw: String = text[at..].chars().take_while(|c| is_path_char(*c)).collect();
            // Balanced braces only; a sentence's comma or full stop is not the path's.
            let raw = match raw.find('{') {
                Some(_) if !raw.contains('}') => raw[..raw.find('{').unwrap_or(raw.len())].to_string(),
                _ => raw,
            };
            let raw = match raw.rfind('}') {
                Some(close) => {
                    let tail: String = raw[close + 1..].chars().take_while(|c| !",".contains(*c)).collect();
                    format!("{}{}", &raw[..=close], tail)
                }
                None => raw.split(',').next().unwrap_or("").to_string(),
            };
            let raw = raw.trim_end_matches(['.', ',', '-']);
            if raw.contains('*') || raw.len() <= start.len() {
                continue;
            }
            found.extend(expand(raw));
        }
    }
    found
}

/// Backticked `….rs` names not starting at the root (`hub/reader.rs`, `lib.rs`).
fn relative_rust_paths(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| t.ends_with(".rs") && !t.contains(char::is_whitespace) && !t.contains('*'))
        .filter(|t| !ROOTS.iter().any(|r| t.starts_with(r)))
        .flat_map(expand)
        .collect()
}

/// A document's section numbers and heading titles (lower case).
type Headings = (BTreeSet<String>, Vec<String>);

/// `## 5.`, `### 5.4` … headings of a Markdown file: their numbers and titles.
fn headings(doc: &str) -> Headings {
    let text = std::fs::read_to_string(root().join("docs").join(doc)).unwrap_or_default();
    let mut numbers = BTreeSet::new();
    let mut titles = Vec::new();
    for line in text.lines() {
        // A bold lead-in (`**Framing is ours.**`) names a paragraph as a heading does.
        if let Some(bold) = line.strip_prefix("**").and_then(|b| b.split("**").next()) {
            titles.push(bold.to_lowercase());
            continue;
        }
        if !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        titles.push(title.to_lowercase());
        let number: String = title.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        let number = number.trim_end_matches('.');
        if !number.is_empty() {
            numbers.insert(number.to_string());
        }
    }
    (numbers, titles)
}

/// `§N` cited after the document's name, and `"Title"` quoted after it.
fn cited_sections(text: &str, names: &[&str]) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut numbers, mut titles) = (BTreeSet::new(), BTreeSet::new());
    for name in names {
        let mut from = 0;
        while let Some(i) = text[from..].find(name) {
            let after = &text[from + i + name.len()..];
            from += i + name.len();
            let after = after.strip_prefix(".md").unwrap_or(after);
            let rest = after
                .trim_start_matches([' ', '\n', '/', '*'])
                .trim_start_matches("//! ");
            if let Some(section) = rest.strip_prefix('§') {
                let n: String = section
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.')
                    .collect();
                let n = n.trim_end_matches('.');
                if !n.is_empty() {
                    numbers.insert(n.to_string());
                }
            } else if let Some(quoted) = rest.strip_prefix('"') {
                if let Some(end) = quoted.find('"') {
                    // A title may run over two comment lines.
                    titles.insert(quoted[..end].split_whitespace().collect::<Vec<_>>().join(" "));
                }
            }
        }
    }
    (numbers, titles)
}

/// Whether `path`, named in a file of folder `here`, exists: from the root, from
/// `src/` (`redis/tail.rs` is `src/redis/tail.rs`; `redis/append.lua` the root's),
/// from the file's folder or its parent, or as the end of some source file's path
/// (`reader.rs` in a document's section on the hub, `websocket/codec/`).
fn exists(path: &str, here: &Path, all: &[PathBuf]) -> bool {
    let root = root();
    let path = path.trim_end_matches('/');
    let direct = [root.join(path), root.join("src").join(path), root.join(here).join(path)];
    if direct.iter().any(|c| c.exists()) {
        return true;
    }
    // A bare file name is read in its section's context; a path with a folder must
    // be a path from one of the places above.
    let tail = format!("/{path}");
    !path.contains('/') && all.iter().any(|f| f.to_string_lossy().ends_with(&tail))
}

#[test]
fn every_path_and_section_a_document_or_comment_names_exists() {
    let root = root();
    let mut missing = Vec::new();
    let docs: Vec<(&str, &str, Headings)> = vec![
        ("PROTOCOL.md", "PROTOCOL", headings("PROTOCOL.md")),
        ("ARCHITECTURE.md", "ARCHITECTURE", headings("ARCHITECTURE.md")),
        ("OPERATIONS.md", "OPERATIONS", headings("OPERATIONS.md")),
        ("BENCHMARKS.md", "BENCHMARKS", headings("BENCHMARKS.md")),
        ("TESTING.md", "TESTING", headings("TESTING.md")),
    ];
    let mut checked = 0;
    let all = sources();
    // This file's own examples are not references.
    let scanned = documents()
        .into_iter()
        .chain(sources())
        .filter(|f| f != Path::new("tests/docs.rs"));
    for file in scanned {
        let Ok(text) = std::fs::read_to_string(root.join(&file)) else {
            continue;
        };
        let text = prose(&file, &text);
        let here = file.parent().map(Path::to_path_buf).unwrap_or_default();
        for path in rooted_paths(&text).into_iter().chain(relative_rust_paths(&text)) {
            checked += 1;
            // What `cargo fuzz run` grows is not in the repository.
            if path.starts_with("fuzz/corpus") {
                continue;
            }
            if !exists(&path, &here, &all) {
                missing.push(format!("{}: names {path}, which does not exist", file.display()));
            }
        }
        for (doc, short, (numbers, titles)) in &docs {
            let (cited, quoted) = cited_sections(&text, &[short]);
            for n in cited {
                checked += 1;
                if !numbers.contains(&n) {
                    missing.push(format!(
                        "{}: cites {doc} §{n}, which has no such section",
                        file.display()
                    ));
                }
            }
            for q in quoted {
                checked += 1;
                if !titles.iter().any(|t| t.contains(&q.to_lowercase())) {
                    missing.push(format!(
                        "{}: cites {doc} \"{q}\", which has no such heading",
                        file.display()
                    ));
                }
            }
        }
        for outside in ["SPEC.md", "../shared", "/work/"] {
            if text.contains(outside) {
                missing.push(format!("{}: cites {outside}, outside the repository", file.display()));
            }
        }
    }
    assert!(
        checked > 200,
        "the scan found only {checked} references: is it reading the files?"
    );
    assert!(
        missing.is_empty(),
        "{} stale references:\n{}",
        missing.len(),
        missing.join("\n")
    );
}

#[test]
fn the_scanner_reads_paths_and_sections_as_written() {
    let text = "see `src/hub/reader.rs`, src/session/{websocket,sse}/ and tests/*.rs. Also src/lib.rs.";
    let paths = rooted_paths(text);
    assert!(paths.contains("src/hub/reader.rs"), "{paths:?}");
    assert!(
        paths.contains("src/session/websocket/") && paths.contains("src/session/sse/"),
        "{paths:?}"
    );
    assert!(paths.contains("src/lib.rs"), "{paths:?}");
    assert!(!paths.iter().any(|p| p.contains('*')), "{paths:?}");
    assert_eq!(
        relative_rust_paths("the reader (`hub/reader.rs`) and `lib.rs`"),
        BTreeSet::from(["hub/reader.rs".to_string(), "lib.rs".to_string()])
    );
    let (numbers, titles) = cited_sections(
        "docs/PROTOCOL.md §5.4 and PROTOCOL §11, docs/PROTOCOL.md \"Candles\"",
        &["PROTOCOL"],
    );
    assert_eq!(numbers, BTreeSet::from(["5.4".to_string(), "11".to_string()]));
    assert_eq!(titles, BTreeSet::from(["Candles".to_string()]));
}

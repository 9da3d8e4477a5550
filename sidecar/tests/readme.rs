//! The README, true to the binary: every ```sh block of README.md that
//! shows output (lines starting with `# =>`) is run by bash against the
//! real `quiesce`, and what it prints on stdout must be, line for line,
//! what the block shows.
//!
//! The scheme, as the README states it to readers: `# => TEXT` is a line
//! the commands above print, in order; `...` in TEXT stands for any text
//! (times, timestamps, pseudonyms). Every stdout line must be shown: a
//! command whose output the README does not show must print nothing.
//!
//! A block runs as written, in a scratch directory, with three changes:
//! `cargo run --release --` is the binary under test; `serve` listens on a
//! free port (`QUIESCE_LISTEN=127.0.0.1:0`) and `localhost:8080` is the
//! address it wrote to `quiesce-data/listen.addr`; `examples/` is a link to
//! the repository's, so the anonymize example reads the sample exports.
//! The commands need bash, curl and openssl: where one is missing the
//! test says so and is skipped, unless `CI` is set (then it fails).

mod support;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::{Process, TempDir, WATCHDOG};

/// One ```sh block that shows output.
struct Block {
    /// The line of README.md the block starts on (for messages).
    line: usize,
    /// The heading the block is under.
    section: String,
    /// Its text, `# =>` lines included (comments to bash).
    script: String,
    /// The `# =>` lines, without the marker.
    expected: Vec<String>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The ```sh blocks of `readme` with at least one `# =>` line.
fn checked_blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut section = String::new();
    let mut current: Option<Block> = None;
    for (i, line) in readme.lines().enumerate() {
        match current.as_mut() {
            None if line.starts_with('#') => section = line.to_string(),
            None if line.trim_end() == "```sh" => {
                current = Some(Block {
                    line: i + 1,
                    section: section.clone(),
                    script: String::new(),
                    expected: Vec::new(),
                })
            }
            None => {}
            Some(_) if line.trim_end() == "```" => {
                let block = current.take().unwrap();
                if !block.expected.is_empty() {
                    blocks.push(block);
                }
            }
            Some(block) => {
                if let Some(shown) = line.strip_prefix("# => ") {
                    block.expected.push(shown.to_string());
                }
                block.script.push_str(line);
                block.script.push('\n');
            }
        }
    }
    assert!(current.is_none(), "README.md ends inside a ```sh block");
    blocks
}

/// Whether `text` is `pattern` with each `...` standing for any text.
fn matches(pattern: &str, text: &str) -> bool {
    let pieces: Vec<&str> = pattern.split("...").collect();
    if pieces.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// The block as the test runs it (see the module's comment).
fn rewrite(script: &str, binary: &Path) -> String {
    let script = script
        .replace(
            "cargo run --release --",
            &format!("'{}'", binary.to_str().expect("a UTF-8 path")),
        )
        .replace(
            "localhost:8080",
            "$(cat quiesce-data/listen.addr 2>/dev/null)",
        );
    // Whatever happens, no server outlives the script.
    format!("trap 'kill $(jobs -p) 2>/dev/null' EXIT\n{script}")
}

/// `true` when every tool the blocks use is here; otherwise says which is
/// missing (and fails under CI).
fn tools_present() -> bool {
    for tool in ["bash", "curl", "openssl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the README's commands: {tool} is missing"
            );
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: README.md not checked ({tool} is missing)"
            );
            return false;
        }
    }
    true
}

/// Runs `block` in `dir`; its stdout.
fn run(block: &Block, dir: &TempDir) -> String {
    let script = rewrite(&block.script, Path::new(env!("CARGO_BIN_EXE_quiesce")));
    let mut bash = Command::new("bash");
    bash.args(["-c", &script])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .env("QUIESCE_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info");
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("QUIESCE_") && key_text != "QUIESCE_LISTEN" {
            bash.env_remove(key);
        }
    }
    let exit = Process::start(bash).wait_exit(WATCHDOG);
    assert_eq!(
        exit.code(),
        Some(0),
        "the block on README.md line {} failed\nstdout:\n{}\nstderr:\n{}",
        block.line,
        exit.stdout,
        exit.log
    );
    exit.stdout
}

fn assert_shown(block: &Block, stdout: &str) {
    let printed: Vec<&str> = stdout.lines().collect();
    let report = || {
        format!(
            "the block on README.md line {} ({}) shows:\n{}\nbut printed:\n{}",
            block.line,
            block.section,
            block.expected.join("\n"),
            stdout
        )
    };
    assert_eq!(printed.len(), block.expected.len(), "{}", report());
    for (shown, line) in block.expected.iter().zip(&printed) {
        assert!(
            matches(shown, line),
            "`{shown}` is not `{line}`\n{}",
            report()
        );
    }
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(at) = todo.pop() {
        for entry in fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                found.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    found.sort();
    found
}

/// After the anonymize example: an output per sample export, none holding
/// an identifier or a phone number of its input.
fn assert_deidentified(dir: &TempDir) {
    let exports = repo_root().join("examples/data/exports");
    let inputs = files_under(&exports);
    assert!(!inputs.is_empty(), "no sample exports in {exports:?}");
    assert_eq!(files_under(&dir.join("deid")), inputs);
    for rel in &inputs {
        let input = fs::read_to_string(exports.join(rel)).unwrap();
        let output = fs::read_to_string(dir.join("deid").join(rel)).unwrap();
        let mut reader = csv::Reader::from_reader(input.as_bytes());
        let header = reader.headers().unwrap().clone();
        let secret: Vec<usize> = ["patient_id", "name", "dob", "phone"]
            .iter()
            .map(|c| header.iter().position(|h| h == *c).unwrap())
            .collect();
        let mut rows = 0;
        for record in reader.records() {
            let record = record.unwrap();
            rows += 1;
            for &i in &secret {
                assert!(
                    !output.contains(&record[i]),
                    "{} still holds `{}`",
                    rel.display(),
                    &record[i]
                );
            }
        }
        assert!(rows > 0, "{} has no rows", rel.display());
        assert_eq!(output.lines().count(), rows + 1, "{}", rel.display());
    }
}

#[test]
fn the_pattern_matcher_is_strict_outside_its_ellipses() {
    assert!(matches("a", "a"));
    assert!(!matches("a", "ab"));
    assert!(matches("a...c", "abbbc"));
    assert!(matches("a...c", "ac"));
    assert!(!matches("a...c", "abcd"));
    assert!(matches("{\"x\":...,\"y\":2}", "{\"x\":1,\"y\":2}"));
    assert!(!matches("a...b...c", "acb"));
    assert!(!matches("ab...ba", "aba"));
}

#[test]
fn every_output_shown_in_the_readme_is_what_the_binary_prints() {
    let readme = fs::read_to_string(repo_root().join("README.md")).unwrap();
    let blocks = checked_blocks(&readme);
    // The sections whose examples must be checked: a renamed heading or a
    // block that lost its `# =>` lines fails here instead of going unchecked.
    for section in ["## Try the sidecar", "## De-identify CSV exports"] {
        assert!(
            blocks.iter().any(|b| b.section.starts_with(section)),
            "no checked block under `{section}` in README.md"
        );
    }
    if !tools_present() {
        return;
    }
    for block in &blocks {
        let dir = TempDir::new("readme");
        std::os::unix::fs::symlink(repo_root().join("examples"), dir.join("examples")).unwrap();
        let stdout = run(block, &dir);
        assert_shown(block, &stdout);
        if block.section.starts_with("## De-identify CSV exports") {
            assert_deidentified(&dir);
        }
    }
}

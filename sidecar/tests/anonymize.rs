//! `quiesce anonymize` as a user runs it (issue 6): generated CSV exports
//! in a scratch directory, the real binary, its exit status, its output
//! files parsed back with the `csv` crate.
//!
//! Every run has a watchdog: a child still alive after a minute is killed
//! and the test fails. Nothing here asserts on wall-clock time.

mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use support::{Exit, Process, TempDir, WATCHDOG, quiesce};

const KEY: &str = "test-key-0123456789abcdef";
const OTHER_KEY: &str = "another-key-fedcba9876543210";
const HEADER: [&str; 6] = ["patient_id", "name", "dob", "visit", "score", "notes"];

// ---------------------------------------------------------------- harness

/// CSV text of `rows` (the first is the header), written by the csv crate.
fn csv_bytes(rows: &[Vec<&str>]) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for row in rows {
        w.write_record(row).unwrap();
    }
    w.into_inner().unwrap()
}

/// Every record of a CSV file, header included, as bytes.
fn records(path: &Path) -> Vec<Vec<Vec<u8>>> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    r.byte_records()
        .map(|rec| rec.unwrap().iter().map(<[u8]>::to_vec).collect())
        .collect()
}

fn column(records: &[Vec<Vec<u8>>], name: &str) -> Vec<Vec<u8>> {
    let i = records[0]
        .iter()
        .position(|h| h == name.as_bytes())
        .unwrap_or_else(|| panic!("no column {name}"));
    records[1..].iter().map(|r| r[i].clone()).collect()
}

/// What the test computes on its own: `anon_` + 16 hex digits of
/// HMAC-SHA256(key, value).
fn expected_pseudonym(key: &str, value: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(value);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("anon_{hex}").into_bytes()
}

/// Every file under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn assert_no_temp_files(dir: &Path) {
    let temps: Vec<String> = files_under(dir)
        .into_iter()
        .filter(|f| f.contains("quiesce-tmp"))
        .collect();
    assert!(temps.is_empty(), "temporary files left: {temps:?}");
}

/// `quiesce anonymize ARGS` with the test key in the environment, its
/// stdout piped.
fn anonymize(args: &[&str]) -> Command {
    let mut cmd = quiesce(&["anonymize"]);
    cmd.args(args)
        .env("QUIESCE_ANON_KEY", KEY)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped());
    cmd
}

/// Runs to the exit (within the watchdog).
fn run(cmd: Command) -> Exit {
    Process::start(cmd).wait_exit(WATCHDOG)
}

/// Runs and checks the exit status, showing the output if it differs.
fn run_expect(cmd: Command, code: i32) -> Exit {
    let finished = run(cmd);
    assert_eq!(
        finished.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        finished.stdout,
        finished.log
    );
    finished
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `path` made readable by its owner only (`chmod 600`), as a key file
/// must be (issue 13).
fn private(path: std::path::PathBuf) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A visit export: `rows` rows over 50 patients, with empty identifiers
/// now and then and notes that need quoting.
fn export(visit: &str, rows: usize, seed: usize) -> Vec<u8> {
    let mut owned: Vec<Vec<String>> = vec![HEADER.iter().map(|h| h.to_string()).collect()];
    for i in 0..rows {
        let p = (i * 7 + seed) % 50;
        owned.push(vec![
            if i % 13 == 5 {
                String::new()
            } else {
                format!("P-{p:04}")
            },
            format!("Doe, Jane {p}"),
            if i % 11 == 3 {
                String::new()
            } else {
                format!("19{}-0{}-1{}", 40 + p, 1 + p % 9, p % 10)
            },
            visit.to_string(),
            (i % 41).to_string(),
            if i % 4 == 0 {
                format!("said \"ok\", then\nleft ({i})")
            } else {
                format!("note {i}")
            },
        ]);
    }
    let rows: Vec<Vec<&str>> = owned
        .iter()
        .map(|r| r.iter().map(String::as_str).collect())
        .collect();
    csv_bytes(&rows)
}

/// A large export, quickly: `rows` lines of plain fields.
fn big_export(rows: usize) -> Vec<u8> {
    let mut out = String::with_capacity(rows * 80);
    out.push_str("patient_id,name,dob,visit,score,notes\n");
    for i in 0..rows {
        let p = i % 5000;
        out.push_str(&format!(
            "P-{p:05},Name {p},19{}-01-{:02},week{},{},free text for row {i}\n",
            10 + p % 90,
            1 + p % 28,
            i % 12,
            i % 41
        ));
    }
    out.into_bytes()
}

// ------------------------------------------------------------------ tests

#[test]
fn pseudonyms_are_the_same_across_files_and_runs_and_change_with_the_key() {
    let dir = TempDir::new("consistent");
    let a = dir.write("in/baseline.csv", &export("baseline", 200, 0));
    let b = dir.write("in/week4.csv", &export("week4", 150, 3));
    let out1 = dir.join("out1");
    let out2 = dir.join("out2");
    let out3 = dir.join("out3");
    let cols = "patient_id,name,dob";
    run_expect(
        anonymize(&["--columns", cols, "--out", s(&out1), s(&a), s(&b)]),
        0,
    );
    run_expect(
        anonymize(&["-c", cols, "-o", s(&out2), "-j", "1", s(&b), s(&a)]),
        0,
    );
    let mut other = anonymize(&["-c", cols, "-o", s(&out3), s(&a), s(&b)]);
    other.env("QUIESCE_ANON_KEY", OTHER_KEY);
    run_expect(other, 0);

    for name in ["baseline.csv", "week4.csv"] {
        let input = records(&dir.join(format!("in/{name}")));
        let first = records(&out1.join(name));
        let second = records(&out2.join(name));
        let third = records(&out3.join(name));
        assert_eq!(first, second, "{name}: another run gave other output");
        assert_eq!(first[0], input[0], "{name}: header changed");
        for col in ["patient_id", "name", "dob"] {
            let plain = column(&input, col);
            let ours = column(&first, col);
            let keyed_otherwise = column(&third, col);
            for ((value, p1), p3) in plain.iter().zip(&ours).zip(&keyed_otherwise) {
                if value.is_empty() {
                    assert!(
                        p1.is_empty() && p3.is_empty(),
                        "{name}/{col}: empty must stay empty"
                    );
                } else {
                    assert_eq!(p1, &expected_pseudonym(KEY, value), "{name}/{col}");
                    assert_eq!(p3, &expected_pseudonym(OTHER_KEY, value), "{name}/{col}");
                    assert_ne!(p1, p3, "{name}/{col}: another key, same pseudonym");
                }
            }
        }
    }
    // The same patient has the same pseudonym in both files.
    let ids = |name: &str| column(&records(&out1.join(name)), "patient_id");
    let (base, week4) = (ids("baseline.csv"), ids("week4.csv"));
    let shared = base
        .iter()
        .filter(|p| !p.is_empty() && week4.contains(p))
        .count();
    assert!(shared > 0, "no pseudonym shared between the two files");
}

#[test]
fn other_columns_are_untouched_field_by_field() {
    let dir = TempDir::new("untouched");
    let input = dir.write("visits.csv", &export("week8", 500, 1));
    let out = dir.join("out");
    run_expect(
        anonymize(&["-c", "patient_id,dob", "-o", s(&out), s(&input)]),
        0,
    );
    let before = records(&input);
    let after = records(&out.join("visits.csv"));
    assert_eq!(before.len(), after.len(), "row count");
    assert_eq!(before[0], after[0], "header and its order");
    for (line, (b, a)) in before.iter().zip(&after).enumerate().skip(1) {
        assert_eq!(b.len(), a.len(), "record {line}: field count");
        for (i, name) in HEADER.iter().enumerate() {
            if *name == "patient_id" || *name == "dob" {
                if !b[i].is_empty() {
                    assert_ne!(b[i], a[i], "record {line}: {name} not replaced");
                }
            } else {
                assert_eq!(b[i], a[i], "record {line}: {name} changed");
            }
        }
    }
}

#[test]
fn quoting_with_commas_quotes_and_newlines_survives() {
    let dir = TempDir::new("quoting");
    let nasty = [
        "plain",
        "a, comma",
        "a \"quoted\" word",
        "two\nlines",
        "crlf\r\ninside",
        "\"",
        ",",
        " padded ",
        "ünïcödé, \"mixed\"\nall",
    ];
    let mut rows = vec![vec!["id", "comment", "name"]];
    for v in &nasty {
        rows.push(vec![v, v, v]);
    }
    let input = dir.write("quotes.csv", &csv_bytes(&rows));
    // Also a Windows export: byte order mark and CRLF line ends.
    let mut windows = b"\xEF\xBB\xBFid,comment\r\n".to_vec();
    windows.extend_from_slice(b"\"P,1\",\"said \"\"hi\"\"\r\nbye\"\r\nP2,plain\r\n");
    let win = dir.write("windows.csv", &windows);
    let out = dir.join("out");
    run_expect(
        anonymize(&["-c", "id", "-o", s(&out), s(&input), s(&win)]),
        0,
    );

    let after = records(&out.join("quotes.csv"));
    assert_eq!(after.len(), nasty.len() + 1);
    for (row, v) in after[1..].iter().zip(&nasty) {
        assert_eq!(row[0], expected_pseudonym(KEY, v.as_bytes()));
        assert_eq!(row[1], v.as_bytes());
        assert_eq!(row[2], v.as_bytes());
    }

    let raw = fs::read(out.join("windows.csv")).unwrap();
    assert!(
        raw.starts_with(b"\xEF\xBB\xBFid,comment\r\n"),
        "BOM and CRLF kept: {raw:?}"
    );
    let after = records(&out.join("windows.csv"));
    assert_eq!(after[1][0], expected_pseudonym(KEY, b"P,1"));
    assert_eq!(after[1][1], b"said \"hi\"\r\nbye");
    assert_eq!(
        after[2],
        [expected_pseudonym(KEY, b"P2"), b"plain".to_vec()]
    );
}

#[test]
fn directories_are_searched_recursively_keeping_relative_paths() {
    let dir = TempDir::new("recursive");
    let csv = export("baseline", 20, 0);
    dir.write("exports/top.csv", &csv);
    dir.write("exports/site-a/visits.csv", &csv);
    dir.write("exports/site-a/2024/q1/visits.CSV", &csv);
    dir.write("exports/site-b/visits.csv", &csv);
    dir.write("exports/site-b/readme.txt", b"not a csv");
    dir.write("exports/site-b/visits.csv.bak", b"not a csv either");
    let single = dir.write("extra/lonely.csv", &csv);
    // The output directory lives inside the input directory.
    let out = dir.join("exports/deid");
    let exports = dir.join("exports");
    let expected = [
        "lonely.csv",
        "site-a/2024/q1/visits.CSV",
        "site-a/visits.csv",
        "site-b/visits.csv",
        "top.csv",
    ];
    for round in 0..2 {
        // The second round must not read the first round's outputs.
        let done = run_expect(
            anonymize(&["-c", "patient_id", "-o", s(&out), s(&exports), s(&single)]),
            0,
        );
        assert_eq!(files_under(&out), expected, "round {round}");
        let done_rows = done
            .stdout
            .lines()
            .filter(|l| l.ends_with("  done"))
            .count();
        assert_eq!(done_rows, expected.len(), "round {round}: {}", done.stdout);
        assert!(
            !done.stdout.contains("deid/"),
            "round {round} read its outputs: {}",
            done.stdout
        );
    }
    for rel in expected {
        let after = records(&out.join(rel));
        assert_eq!(after.len(), 21, "{rel}");
    }
}

#[test]
fn drop_removes_columns_entirely() {
    let dir = TempDir::new("drop");
    let input = dir.write("visits.csv", &export("baseline", 50, 0));
    let out = dir.join("out");
    run_expect(
        anonymize(&[
            "-c",
            "patient_id",
            "--drop",
            "name,notes",
            "--drop",
            "dob",
            "-o",
            s(&out),
            s(&input),
        ]),
        0,
    );
    let before = records(&input);
    let after = records(&out.join("visits.csv"));
    assert_eq!(
        after[0],
        [b"patient_id".to_vec(), b"visit".to_vec(), b"score".to_vec()]
    );
    for (b, a) in before[1..].iter().zip(&after[1..]) {
        assert_eq!(a.len(), 3);
        assert_eq!(a[1], b[3]);
        assert_eq!(a[2], b[4]);
    }
    // A --drop column a file lacks fails that file: a typo must not let a
    // column through.
    let fail = run_expect(
        anonymize(&[
            "-c",
            "patient_id",
            "--drop",
            "phone",
            "-o",
            s(&out),
            s(&input),
        ]),
        1,
    );
    assert!(
        fail.stdout.contains("missing --drop column `phone`"),
        "{}",
        fail.stdout
    );
    // Pseudonymizing and dropping the same column is refused.
    let both = run_expect(
        anonymize(&["-c", "name", "--drop", "name", "-o", s(&out), s(&input)]),
        2,
    );
    assert!(both.log.contains("both --columns and --drop"), "{both:?}");
}

#[test]
fn at_most_n_files_are_in_progress_at_once() {
    let dir = TempDir::new("bounded");
    let csv = big_export(15_000);
    let mut inputs = Vec::new();
    for i in 0..8 {
        inputs.push(dir.write(format!("in/site-{i}.csv"), &csv));
    }
    let out = dir.join("out");
    let mut cmd = anonymize(&["-c", "patient_id,name", "--concurrency", "2", "-o", s(&out)]);
    cmd.args(&inputs).env("RUST_LOG", "debug");
    let done = run_expect(cmd, 0);

    let (mut now, mut max, mut starts, mut ends) = (0i32, 0i32, 0, 0);
    for line in done.log.lines() {
        let Some(at) = line.find("] start ").or_else(|| line.find("] end ")) else {
            continue;
        };
        let (k, n) = parse_in_progress(line);
        assert!(n == 2 && k <= 2, "reported {k} of {n}: {line}");
        if line[at..].starts_with("] start ") {
            starts += 1;
            now += 1;
        } else {
            ends += 1;
            now -= 1;
        }
        max = max.max(now);
        assert!(now >= 0, "an end before its start: {line}");
    }
    assert_eq!((starts, ends), (8, 8), "{}", done.log);
    assert!(max <= 2, "{max} files in progress at once:\n{}", done.log);
    assert_eq!(files_under(&out).len(), 8);
}

/// `(k, n)` from `... (in progress: k of n)`.
fn parse_in_progress(line: &str) -> (i32, i32) {
    let tail = &line[line.rfind("(in progress: ").expect("in progress") + 14..];
    let tail = tail.trim_end_matches(')');
    let (k, n) = tail.split_once(" of ").expect("k of n");
    (k.parse().unwrap(), n.parse().unwrap())
}

/// The summary rows on stdout: (file, status).
fn summary_rows(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .skip(1)
        .take_while(|l| !l.contains(" done, ") || !l.contains(" not started; "))
        .map(|l| {
            let file = l.split_whitespace().next().unwrap().to_string();
            let status = l
                .split("  ")
                .filter(|c| !c.is_empty())
                .last()
                .unwrap()
                .trim()
                .to_string();
            (file, status)
        })
        .collect()
}

/// Sends `SIG<sig>` in the middle of a run; the run must stop like after
/// SIGINT, with only complete outputs.
fn a_signal_in_the_middle_leaves_only_complete_outputs(sig: &str) {
    // The signal goes out as soon as the first file starts. Should this
    // machine finish a file before that (it never has), or all of them,
    // the inputs grow and the run is repeated.
    let mut rows = 60_000; // about 4 MB per file
    for attempt in 0..3 {
        let dir = TempDir::new(&format!("sig{}", sig.to_lowercase()));
        let csv = big_export(rows);
        let mut inputs = Vec::new();
        for i in 0..6 {
            inputs.push(dir.write(format!("in/part-{i}.csv"), &csv));
        }
        let out = dir.join("out");
        let mut cmd = anonymize(&["-c", "patient_id,name,dob", "-j", "2", "-o", s(&out)]);
        cmd.args(&inputs).env("RUST_LOG", "debug");
        let mut child = Process::start(cmd);
        child.wait_for_line("] start ");
        // Not sent if it has already finished: then the inputs grow.
        child.try_signal(sig);
        let done = child.wait_exit(WATCHDOG);

        assert_no_temp_files(&out);
        let expected_records = records(&inputs[0]).len();
        let outputs = files_under(&out);
        for rel in &outputs {
            let after = records(&out.join(rel));
            assert_eq!(after.len(), expected_records, "{rel} is incomplete");
        }
        let table = summary_rows(&done.stdout);
        let done_files: Vec<&(String, String)> =
            table.iter().filter(|(_, st)| st == "done").collect();
        assert_eq!(
            done_files.len(),
            outputs.len(),
            "summary vs files: {}",
            done.stdout
        );
        let cut = table
            .iter()
            .filter(|(_, st)| st.starts_with("cancelled"))
            .count();
        if done.code() == Some(3) && cut > 0 {
            let stopped_by = format!("stopped by SIG{sig}");
            assert!(done.stdout.contains(&stopped_by), "{}", done.stdout);
            assert!(outputs.len() < 6);
            return;
        }
        eprintln!(
            "attempt {attempt}: the signal came too late ({:?}); again with more rows",
            done.code()
        );
        rows *= 4;
    }
    panic!("SIG{sig} never landed in the middle of a file");
}

#[test]
fn sigint_in_the_middle_leaves_only_complete_outputs() {
    a_signal_in_the_middle_leaves_only_complete_outputs("INT");
}

/// Issue 12, finding 7: SIGHUP (a closed terminal) used to kill the run at
/// once and leave a partial temporary output behind.
#[test]
fn sighup_stops_the_run_like_sigterm_with_only_complete_outputs() {
    a_signal_in_the_middle_leaves_only_complete_outputs("HUP");
}

#[test]
fn the_deadline_stops_the_run_with_exit_3_and_no_partial_files() {
    let dir = TempDir::new("deadline");
    let csv = big_export(40_000);
    let mut inputs = Vec::new();
    for i in 0..4 {
        inputs.push(dir.write(format!("in/part-{i}.csv"), &csv));
    }
    let out = dir.join("out");
    let mut cmd = anonymize(&["-c", "patient_id", "--timeout", "1ms", "-o", s(&out)]);
    cmd.args(&inputs);
    let done = run_expect(cmd, 3);
    assert_no_temp_files(&out);
    assert!(files_under(&out).is_empty(), "{:?}", files_under(&out));
    assert!(
        done.stdout.contains("the --timeout of 1ms passed"),
        "{}",
        done.stdout
    );
    let table = summary_rows(&done.stdout);
    assert_eq!(table.len(), 4);
    assert!(
        table
            .iter()
            .all(|(_, st)| st == "not started" || st.starts_with("cancelled")),
        "{table:?}"
    );
}

#[test]
fn a_malformed_file_fails_with_its_line_while_the_others_complete() {
    let dir = TempDir::new("malformed");
    let good = export("baseline", 30, 0);
    dir.write("in/a-good.csv", &good);
    dir.write("in/z-good.csv", &good);
    dir.write(
        "in/short-row.csv",
        b"patient_id,name,dob\nP-1,Ann,1970-01-01\n\"P-2\",\"Bob\nBobson\",1971-02-02\nP-3,Cy\nP-4,Di,1973-04-04\n",
    );
    dir.write(
        "in/open-quote.csv",
        b"patient_id,name,dob\nP-1,Ann,1970-01-01\nP-2,\"Bob,1971-02-02\nP-3,Cy,1972\n",
    );
    dir.write(
        "in/open-quote-last.csv",
        b"patient_id,name,dob\nP-1,Ann,1970-01-01\nP-2,Bob,\"1971\nP-3,Cy,1972\n",
    );
    let out = dir.join("out");
    let done = run_expect(
        anonymize(&[
            "-c",
            "patient_id,name,dob",
            "-o",
            s(&out),
            s(&dir.join("in")),
        ]),
        1,
    );

    let table = summary_rows(&done.stdout);
    let status = |file: &str| {
        table
            .iter()
            .find(|(f, _)| f.ends_with(file))
            .unwrap_or_else(|| panic!("{file} not in {}", done.stdout))
            .1
            .clone()
    };
    assert_eq!(status("a-good.csv"), "done");
    assert_eq!(status("z-good.csv"), "done");
    // Line 5 (a quoted newline on line 3 counts): "P-3,Cy" has 2 fields.
    assert_eq!(
        status("short-row.csv"),
        "failed: line 5: 2 fields where the header has 3"
    );
    assert!(
        status("open-quote.csv").starts_with("failed: line 3: "),
        "{}",
        done.stdout
    );
    assert_eq!(
        status("open-quote-last.csv"),
        "failed: line 3: a quoted field is never closed (unclosed quote)"
    );
    assert!(
        done.log.contains("failed: "),
        "per-file lines: {}",
        done.log
    );
    assert_eq!(files_under(&out), ["a-good.csv", "z-good.csv"]);
}

#[test]
fn a_missing_identifier_column_is_named_with_its_file() {
    let dir = TempDir::new("missing-column");
    let input = dir.write(
        "no-dob.csv",
        &csv_bytes(&[vec!["patient_id", "name"], vec!["P-1", "Ann"]]),
    );
    let out = dir.join("out");
    let done = run_expect(
        anonymize(&["-c", "patient_id,dob", "-o", s(&out), s(&input)]),
        1,
    );
    let line = done
        .stdout
        .lines()
        .find(|l| l.contains("no-dob.csv"))
        .unwrap_or_else(|| panic!("{}", done.stdout));
    assert!(line.contains("missing identifier column `dob`"), "{line}");
    assert!(files_under(&out).is_empty());
}

#[test]
fn no_key_or_a_short_key_is_refused() {
    let dir = TempDir::new("key");
    let input = dir.write("a.csv", &export("baseline", 5, 0));
    let out = dir.join("out");
    let mut cmd = anonymize(&["-c", "patient_id", "-o", s(&out), s(&input)]);
    cmd.env_remove("QUIESCE_ANON_KEY");
    let done = run_expect(cmd, 2);
    assert!(done.log.contains("no key"), "{}", done.log);

    let mut cmd = anonymize(&["-c", "patient_id", "-o", s(&out), s(&input)]);
    cmd.env("QUIESCE_ANON_KEY", "");
    let done = run_expect(cmd, 2);
    assert!(done.log.contains("is empty"), "{}", done.log);

    let short = private(dir.write("short.key", b"tooshort\n"));
    let mut cmd = anonymize(&[
        "-c",
        "patient_id",
        "--key-file",
        s(&short),
        "-o",
        s(&out),
        s(&input),
    ]);
    cmd.env_remove("QUIESCE_ANON_KEY");
    let done = run_expect(cmd, 2);
    assert!(done.log.contains("at least 16"), "{}", done.log);
    assert!(!out.exists(), "nothing is written without a key");

    // A key file gives the same pseudonyms as the same key in the
    // environment (its trailing newline ignored).
    let good = private(dir.write("good.key", format!("{KEY}\n").as_bytes()));
    let mut cmd = anonymize(&[
        "-c",
        "patient_id",
        "--key-file",
        s(&good),
        "-o",
        s(&out),
        s(&input),
    ]);
    cmd.env_remove("QUIESCE_ANON_KEY");
    run_expect(cmd, 0);
    let ids = column(&records(&out.join("a.csv")), "patient_id");
    assert_eq!(ids[0], expected_pseudonym(KEY, b"P-0000"));
}

#[test]
fn an_input_is_never_overwritten() {
    let dir = TempDir::new("overwrite");
    let csv = export("baseline", 5, 0);
    let input = dir.write("data/a.csv", &csv);
    let data = dir.join("data");
    let done = run_expect(
        anonymize(&["-c", "patient_id", "-o", s(&data), s(&input)]),
        2,
    );
    assert!(
        done.log.contains("would overwrite an input"),
        "{}",
        done.log
    );
    let done = run_expect(
        anonymize(&["-c", "patient_id", "-o", s(&data), s(&data)]),
        2,
    );
    assert!(done.log.contains("is the input directory"), "{}", done.log);
    assert_eq!(fs::read(&input).unwrap(), csv);
    assert_eq!(files_under(&data), ["a.csv"]);
}

#[test]
fn an_unreadable_file_fails_and_the_others_go_on() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let dir = TempDir::new("unreadable");
    dir.write("in/good.csv", &export("baseline", 10, 0));
    symlink(dir.join("in/nowhere.csv"), dir.join("in/gone.csv")).unwrap();
    let locked = dir.write("in/locked.csv", &export("baseline", 10, 0));
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads it anyway; then it is simply done.
    let can_read = fs::File::open(&locked).is_ok();
    let out = dir.join("out");
    let done = run_expect(
        anonymize(&["-c", "patient_id", "-o", s(&out), s(&dir.join("in"))]),
        1,
    );
    let table = summary_rows(&done.stdout);
    let status = |file: &str| {
        table
            .iter()
            .find(|(f, _)| f.ends_with(file))
            .unwrap_or_else(|| panic!("{file} not in {}", done.stdout))
            .1
            .clone()
    };
    assert_eq!(status("good.csv"), "done");
    assert!(
        status("gone.csv").starts_with("failed: cannot read: "),
        "{}",
        done.stdout
    );
    if can_read {
        assert_eq!(status("locked.csv"), "done");
    } else {
        assert!(
            status("locked.csv").starts_with("failed: cannot open: "),
            "{}",
            done.stdout
        );
    }
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o600)).unwrap();
    assert_no_temp_files(&out);
}

/// Issue 16: `-q` still printed an INFO line. Quiet means nothing on a
/// clean run (RUST_LOG, when set, still wins).
#[test]
fn quiet_prints_nothing_on_a_clean_run() {
    let dir = TempDir::new("quiet");
    let input = dir.write("in/visits.csv", &export("visit-q", 20, 1));
    let out = dir.join("out");
    let mut cmd = anonymize(&["-q", "-c", "patient_id,name,dob", "-o", s(&out), s(&input)]);
    cmd.env_remove("RUST_LOG");
    let done = run_expect(cmd, 0);
    assert_eq!(done.stdout, "", "stdout");
    assert_eq!(done.log, "", "stderr");
    assert_eq!(files_under(&out).len(), 1);
}

// ------------------------------------- issue 13: the key and the inputs held like secrets

/// `quiesce anonymize -c patient_id --key-file KEY EXTRA.. -o OUT INPUT`,
/// with no key in the environment.
fn with_key_file(key: &Path, extra: &[&str], out: &Path, input: &Path) -> Command {
    let mut args = vec!["-c", "patient_id", "--key-file", s(key), "-o", s(out)];
    args.extend_from_slice(extra);
    args.push(s(input));
    let mut cmd = anonymize(&args);
    cmd.env_remove("QUIESCE_ANON_KEY");
    cmd
}

/// `bash -c SCRIPT` where the script runs the binary as `"$0"` (other
/// arguments as `"$@"`), with the environment of [`anonymize`].
fn bash_running_quiesce(script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_quiesce"))
        .args(args)
        .env_remove("QUIESCE_ANON_KEY")
        .env_remove("QUIESCE_ANON_KEY_FILE")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    cmd
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Issue 13 item 6: a key file that group or others can access is refused,
/// as ssh refuses such a private key, with the `chmod` that fixes it;
/// `--allow-insecure-key` takes it anyway (with a warning).
#[test]
fn a_key_file_others_can_read_is_refused_with_the_chmod_that_fixes_it() {
    let dir = TempDir::new("key-mode");
    let input = dir.write("a.csv", &export("baseline", 5, 0));
    let out = dir.join("out");
    let key = dir.write("anon.key", format!("{KEY}\n").as_bytes());
    for mode in [0o644, 0o640, 0o604, 0o660] {
        set_mode(&key, mode);
        let done = run_expect(with_key_file(&key, &[], &out, &input), 2);
        assert!(
            done.log.contains(&format!("run `chmod 600 {}`", s(&key))),
            "mode {mode:o}: {}",
            done.log
        );
        assert!(done.log.contains("--allow-insecure-key"), "{}", done.log);
        assert!(!out.exists(), "nothing is written with a refused key");
    }

    let done = run_expect(
        with_key_file(&key, &["--allow-insecure-key"], &out, &input),
        0,
    );
    assert!(
        done.log.contains("accessible to other users"),
        "{}",
        done.log
    );
    let ids = column(&records(&out.join("a.csv")), "patient_id");
    assert_eq!(ids[0], expected_pseudonym(KEY, b"P-0000"));

    set_mode(&key, 0o600);
    let done = run_expect(with_key_file(&key, &[], &out, &input), 0);
    assert!(!done.log.contains("other users"), "{}", done.log);
    set_mode(&key, 0o400);
    run_expect(with_key_file(&key, &[], &out, &input), 0);
}

/// Issue 13 item 6: a key file larger than 1 KiB is refused, and at most
/// 1 KiB + 1 byte of one is ever read: `--key-file /dev/zero` used to read
/// until memory ran out. A device or a directory is refused, a FIFO with
/// no writer does not hang the run, and a pipe (`<(…)`) still works.
#[test]
fn a_key_file_larger_than_1_kib_or_not_a_file_is_refused_without_reading_it_all() {
    let dir = TempDir::new("key-size");
    let input = dir.write("a.csv", &export("baseline", 5, 0));
    let out = dir.join("out");

    let big = private(dir.write("big.key", &[b'k'; 1025]));
    let done = run_expect(with_key_file(&big, &[], &out, &input), 2);
    assert!(done.log.contains("larger than 1024 bytes"), "{}", done.log);
    let largest = private(dir.write("largest.key", &[b'k'; 1024]));
    run_expect(with_key_file(&largest, &[], &out, &input), 0);
    fs::remove_dir_all(&out).unwrap();

    // /dev/zero is a world-readable device: refused as a device (before
    // any byte is read), with --allow-insecure-key too.
    for extra in [&[][..], &["--allow-insecure-key"][..]] {
        let done = run_expect(
            with_key_file(Path::new("/dev/zero"), extra, &out, &input),
            2,
        );
        assert!(
            done.log.contains("/dev/zero is a character device"),
            "{}",
            done.log
        );
    }
    let done = run_expect(with_key_file(dir.path(), &[], &out, &input), 2);
    assert!(done.log.contains("is a directory"), "{}", done.log);

    // A FIFO nobody writes to: opening it must not block.
    let fifo = dir.join("key.fifo");
    let made = Command::new("mkfifo")
        .args(["-m", "600", s(&fifo)])
        .status()
        .unwrap();
    assert!(made.success());
    let done = run_expect(with_key_file(&fifo, &[], &out, &input), 2);
    assert!(done.log.contains("is empty"), "{}", done.log);
    assert!(!out.exists());

    // A pipe that never ends is read 1 KiB + 1 byte far, then refused.
    let done = run_expect(
        bash_running_quiesce(
            r#"exec "$0" anonymize --key-file <(yes) "$@""#,
            &["-c", "patient_id", "-o", s(&out), s(&input)],
        ),
        2,
    );
    assert!(done.log.contains("larger than 1024 bytes"), "{}", done.log);
    // A pipe that gives a key is read to its end, as a file.
    let mut piped = bash_running_quiesce(
        r#"exec "$0" anonymize --key-file <(printf '%s\n' "$TEST_KEY") "$@""#,
        &["-c", "patient_id", "-o", s(&out), s(&input)],
    );
    piped.env("TEST_KEY", KEY);
    let done = run_expect(piped, 0);
    assert!(!done.log.contains("other users"), "{}", done.log);
    let ids = column(&records(&out.join("a.csv")), "patient_id");
    assert_eq!(ids[0], expected_pseudonym(KEY, b"P-0000"));
}

/// Issue 13 item 6: a symbolic link in an input directory that points
/// out of it is skipped with a warning naming the link, and what it points
/// to is never read (a link to /etc/passwd used to print its first line as
/// "the header"); links inside the directory are still read, and
/// `--follow-symlinks` reads the others.
#[test]
fn a_symlink_out_of_an_input_directory_is_skipped_and_never_read() {
    use std::os::unix::fs::symlink;
    let dir = TempDir::new("symlink-out");
    let secret = dir.write("outside/passwd", b"SECRET-root:x:0:0:root:/root\n");
    dir.write("in/good.csv", &export("baseline", 5, 0));
    dir.write("in/sub/real.data", &export("baseline", 5, 1));
    symlink(&secret, dir.join("in/passwd.csv")).unwrap();
    symlink("sub/real.data", dir.join("in/inside.csv")).unwrap();
    let out = dir.join("out");

    let done = run_expect(
        anonymize(&["-c", "patient_id", "-o", s(&out), s(&dir.join("in"))]),
        0,
    );
    for text in [&done.stdout, &done.log] {
        assert!(!text.contains("SECRET"), "the target was read:\n{text}");
    }
    let warning = done
        .log
        .lines()
        .find(|l| l.contains("passwd.csv"))
        .unwrap_or_else(|| panic!("no warning names the link:\n{}", done.log));
    assert!(
        warning.contains("WARN")
            && warning.contains("skipping")
            && warning.contains("--follow-symlinks"),
        "{warning}"
    );
    assert_eq!(files_under(&out), ["good.csv", "inside.csv"]);

    let out2 = dir.join("out2");
    let done = run_expect(
        anonymize(&[
            "-c",
            "patient_id",
            "--follow-symlinks",
            "-o",
            s(&out2),
            s(&dir.join("in")),
        ]),
        1,
    );
    let line = done
        .stdout
        .lines()
        .find(|l| l.contains("passwd.csv"))
        .unwrap_or_else(|| panic!("{}", done.stdout));
    assert!(line.contains("missing identifier column"), "{line}");
}

/// Issue 13 item 6: bytes from the inputs never reach the terminal raw:
/// control characters and escape sequences in file names and header names
/// are printed escaped, in the summary, the per-file lines and the log,
/// with and without `--quiet`.
#[test]
fn names_and_headers_from_the_inputs_are_printed_escaped() {
    let dir = TempDir::new("escapes");
    let input = dir.join("in");
    dir.write(
        "in/evil\x1b]0;pwned\x07.csv",
        &csv_bytes(&[vec!["patient_id", "note"], vec!["P-1", "x"]]),
    );
    dir.write(
        "in/bad\x1b[2J.csv",
        &csv_bytes(&[vec!["id\x1b[31m", "name\u{202e}gpj"], vec!["P-1", "x"]]),
    );
    for quiet in [false, true] {
        let out = dir.sub(if quiet { "out-q" } else { "out" });
        let mut args = vec!["-c", "patient_id", "-o", s(&out), s(&input)];
        if quiet {
            args.insert(0, "-q");
        }
        let done = run_expect(anonymize(&args), 1);
        for text in [&done.stdout, &done.log] {
            for raw in ['\x1b', '\x07', '\u{202e}'] {
                assert!(!text.contains(raw), "{raw:?} printed raw:\n{text:?}");
            }
        }
        let shown = format!("{}\n{}", done.stdout, done.log);
        assert!(shown.contains("bad\\x1b[2J.csv"), "{shown}");
        // The header's names are not shown at all (a headerless export's
        // first line is a patient's data); its size is.
        assert!(!shown.contains("id\\x1b"), "{shown}");
        assert!(shown.contains("the first line has 2 columns"), "{shown}");
        if !quiet {
            assert!(shown.contains("evil\\x1b]0;pwned\\x07.csv"), "{shown}");
        }
    }
}

/// Issue 13 item 6: an input is recognised by device and inode, not by
/// path: an output that is an input through a hard link is refused, as
/// through a symlinked --out (which path resolution already caught).
#[test]
fn an_output_that_is_an_input_by_device_and_inode_is_refused() {
    use std::os::unix::fs::symlink;
    let dir = TempDir::new("same-inode");
    let csv = export("baseline", 5, 0);
    let input = dir.write("data/a.csv", &csv);
    let data = dir.join("data");

    let linked = dir.sub("linked");
    fs::hard_link(&input, linked.join("a.csv")).unwrap();
    let done = run_expect(
        anonymize(&["-c", "patient_id", "-o", s(&linked), s(&input)]),
        2,
    );
    assert!(
        done.log.contains("would overwrite an input"),
        "{}",
        done.log
    );
    // The same through a hard-linked file found in a directory.
    let done = run_expect(
        anonymize(&["-c", "patient_id", "-o", s(&linked), s(&data)]),
        2,
    );
    assert!(
        done.log.contains("would overwrite an input"),
        "{}",
        done.log
    );

    let alias = dir.join("alias");
    symlink(&data, &alias).unwrap();
    let done = run_expect(
        anonymize(&["-c", "patient_id", "-o", s(&alias), s(&input)]),
        2,
    );
    assert!(
        done.log.contains("would overwrite an input"),
        "{}",
        done.log
    );
    let done = run_expect(
        anonymize(&["-c", "patient_id", "-o", s(&alias), s(&data)]),
        2,
    );
    assert!(done.log.contains("is the input directory"), "{}", done.log);

    assert_eq!(fs::read(&input).unwrap(), csv);
    assert_eq!(fs::read(linked.join("a.csv")).unwrap(), csv);
    assert_eq!(files_under(&data), ["a.csv"]);
}

/// Issue 13 item 6, as reported: `mount --bind src alias` then `--out src
/// alias/a.csv` replaced the input and exited 0. Run as root in a private
/// mount namespace (`unshare -m`); skipped, saying so, where that is not
/// allowed.
#[test]
fn a_bind_mount_cannot_make_an_output_overwrite_an_input() {
    let allowed = Command::new("unshare")
        .args(["-m", "--propagation", "private", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !allowed {
        eprintln!("skipped: `unshare -m` is not allowed here (needs root or CAP_SYS_ADMIN)");
        return;
    }
    let dir = TempDir::new("bind-mount");
    let csv = export("baseline", 5, 0);
    let input = dir.write("src/a.csv", &csv);
    let src = dir.join("src");
    let alias = dir.sub("alias");
    let bound = |args: &[&str]| {
        let mut all = vec!["-m", "--propagation", "private", "sh", "-c"];
        all.push(r#"mount --bind "$1" "$2" && shift 2 && exec "$@""#);
        all.extend([
            "sh",
            s(&src),
            s(&alias),
            env!("CARGO_BIN_EXE_quiesce"),
            "anonymize",
        ]);
        all.extend(args);
        let mut cmd = Command::new("unshare");
        cmd.args(all)
            .env("QUIESCE_ANON_KEY", KEY)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        cmd
    };
    let alias_file = alias.join("a.csv");
    let done = run_expect(
        bound(&["-c", "patient_id", "-o", s(&src), s(&alias_file)]),
        2,
    );
    assert!(
        done.log.contains("would overwrite an input"),
        "{}",
        done.log
    );
    let done = run_expect(bound(&["-c", "patient_id", "-o", s(&alias), s(&input)]), 2);
    assert!(
        done.log.contains("would overwrite an input"),
        "{}",
        done.log
    );
    let done = run_expect(bound(&["-c", "patient_id", "-o", s(&alias), s(&src)]), 2);
    assert!(done.log.contains("is the input directory"), "{}", done.log);
    assert_eq!(fs::read(&input).unwrap(), csv);
    assert_eq!(files_under(&src), ["a.csv"]);
    assert!(files_under(&alias).is_empty(), "the mount stayed private");
}

/// A malformed row is reported with the line an editor shows it on, whatever
/// the line ends: CRLF files (with or without a BOM, a blank line, or a line
/// break inside a quoted field) give the same line as their LF twin.
#[test]
fn a_malformed_row_is_reported_on_its_physical_line_with_crlf_too() {
    let dir = TempDir::new("crlf-lines");
    // (name, LF content, the physical line of the short row)
    let cases: [(&str, &str, u32); 4] = [
        ("plain", "patient_id,name,dob\nP-1,Ann,1970\nP-2,Bob\n", 3),
        (
            "quoted-newline",
            "patient_id,name,dob\nP-1,\"Ann\nAnnson\",1970\nP-2,Bob,1971\nP-3\n",
            5,
        ),
        (
            "blank-lines",
            "patient_id,name,dob\nP-1,Ann,1970\n\n\nP-2,Bob\n",
            5,
        ),
        ("first-row", "patient_id,name,dob\nP-1,Ann\n", 2),
    ];
    for (name, lf, _) in &cases {
        dir.write(format!("in/{name}-lf.csv"), lf.as_bytes());
        let crlf = lf.replace('\n', "\r\n");
        dir.write(format!("in/{name}-crlf.csv"), crlf.as_bytes());
        let mut bom = b"\xef\xbb\xbf".to_vec();
        bom.extend_from_slice(crlf.as_bytes());
        dir.write(format!("in/{name}-bom-crlf.csv"), &bom);
    }
    let out = dir.join("out");
    let done = run_expect(
        anonymize(&["-c", "patient_id", "-o", s(&out), s(&dir.join("in"))]),
        1,
    );
    let table = summary_rows(&done.stdout);
    for (name, lf, line) in &cases {
        let fields = lf.lines().rfind(|l| !l.is_empty()).unwrap();
        let n = fields.split(',').count();
        let shown = if n == 1 {
            "1 field".to_string()
        } else {
            format!("{n} fields")
        };
        for variant in ["lf", "crlf", "bom-crlf"] {
            let file = format!("{name}-{variant}.csv");
            let status = &table
                .iter()
                .find(|(f, _)| f.ends_with(&file))
                .unwrap_or_else(|| panic!("{file} not in {}", done.stdout))
                .1;
            assert_eq!(
                status,
                &format!("failed: line {line}: {shown} where the header has 3"),
                "{file}"
            );
        }
    }
}

/// Counts are said in the singular for one: "1 field", "1 row", "1 file",
/// "1 byte"; in the plural otherwise.
#[test]
fn counts_of_one_are_singular() {
    let dir = TempDir::new("plural");
    let one = dir.write("one/a.csv", b"patient_id,name\nP-1,Ann\n");
    let out = dir.join("out");
    let done = run_expect(anonymize(&["-c", "patient_id", "-o", s(&out), s(&one)]), 0);
    assert!(
        done.stdout.contains("1 of 1 file done") && done.stdout.contains("; 1 row read"),
        "{}",
        done.stdout
    );
    assert!(done.log.contains("anonymizing 1 file ("), "{}", done.log);

    dir.write("two/a.csv", b"patient_id,name\nP-1,Ann\nP-2,Bob\n");
    dir.write("two/b.csv", b"patient_id,name,dob\nP-1\n");
    let out2 = dir.join("out2");
    let done = run_expect(
        anonymize(&["-c", "patient_id", "-o", s(&out2), s(&dir.join("two"))]),
        1,
    );
    assert!(
        done.stdout.contains("1 of 2 files done") && done.stdout.contains("; 2 rows read"),
        "{}",
        done.stdout
    );
    assert!(
        done.stdout
            .contains("failed: line 2: 1 field where the header has 3"),
        "{}",
        done.stdout
    );
    assert!(done.log.contains("anonymizing 2 files ("), "{}", done.log);

    let mut cmd = anonymize(&["-c", "patient_id", "-o", s(&out), s(&one)]);
    cmd.env("QUIESCE_ANON_KEY", "k");
    let done = run_expect(cmd, 2);
    assert!(done.log.contains("is 1 byte long;"), "{}", done.log);
    let mut cmd = anonymize(&["-c", "patient_id", "-o", s(&out), s(&one)]);
    cmd.env("QUIESCE_ANON_KEY", "kk");
    let done = run_expect(cmd, 2);
    assert!(done.log.contains("is 2 bytes long;"), "{}", done.log);
}

//! `quiesce anonymize` throughput against a plain copy of the same CSV
//! files through the `csv` crate, in one run (issue 6).
//!
//! ```text
//! CARGO_TARGET_DIR=target/bench-helper cargo bench --bench anonymize
//! QUIESCE_BENCH_MB=100 CARGO_TARGET_DIR=target/bench-helper cargo bench --bench anonymize
//! ```
//!
//! The data: 8 generated exports of `QUIESCE_BENCH_MB` MiB each (default
//! 8, at most 100) in a scratch directory under the system temp dir,
//! removed at the end. Each file is one site's ePRO export:
//! `patient_id,name,dob,site,instrument,submitted_at,q1..q8,score,notes`,
//! about 150 bytes a row, 2,000 patients per site, so identifiers repeat
//! as in a real export (a patient has many reports); the name is quoted
//! (it has a comma) and one note in eight has quotes and commas inside.
//! `QUIESCE_BENCH_UNIQUE=1` makes every row a new patient instead: no
//! value repeats, every identifier costs an HMAC (the worst case).
//!
//! Lines of the `anonymize_8_files` group, each with
//! `Throughput::Bytes(input bytes)`, so criterion's `thrpt` is input MiB/s,
//! each with 1 and with 2 workers (`/N`):
//!
//! - `csv_copy/N` — the reference: N named threads take the files in
//!   turn and copy each with `csv::Reader::from_path` +
//!   `read_byte_record` + `csv::Writer::from_path` + `write_byte_record`
//!   (default buffers) into a scratch output directory. No fsync.
//! - `csv_copy_fsync/N` — the same copy, each output written aside,
//!   fsynced and renamed, as quiesce does: the cost of durability alone.
//! - `quiesce/N` — the built binary, `quiesce anonymize -q -j N
//!   --columns patient_id,name,dob -o OUT IN/`, as a subprocess: process
//!   start, directory search, HMAC-SHA256 of three columns per row, and an
//!   fsync + rename per output are all inside the timing.
//!
//! At the end a table gives the median MiB/s of each line, the ratio of
//! each line to `csv_copy/N` and to `csv_copy_fsync/N` with the same
//! workers (the issue's goal: quiesce at least 0.7x the copy), and the
//! gain from 1 to 2 workers (goal: near 2 on 2 idle cores). The output
//! directory is emptied before each run, outside the timing.
//!
//! The peak memory on a 1 GB file is not part of this bench; see the
//! README (`/usr/bin/time -v quiesce anonymize ...`).

// The tests' temporary directory.
#[allow(dead_code)]
#[path = "../tests/support/temp.rs"]
mod temp;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use temp::TempDir;

const FILES: usize = 8;
const SAMPLES: usize = 10;
const MIB: u64 = 1024 * 1024;

/// One line's median throughput, for the summary.
struct Row {
    line: String,
    mib_s: f64,
}

static RESULTS: Mutex<Vec<Row>> = Mutex::new(Vec::new());

/// MiB per file, from `QUIESCE_BENCH_MB` (1..=100, default 8).
fn mib_per_file() -> u64 {
    std::env::var("QUIESCE_BENCH_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(8)
        .clamp(1, 100)
}

/// The scratch directory: `in/` holds the exports; removed on drop.
struct Data {
    root: TempDir,
    inputs: Vec<PathBuf>,
    bytes: u64,
}

impl Data {
    fn generate(mib: u64) -> Data {
        let root = TempDir::new("bench-anonymize");
        let dir = root.sub("in");
        let mut inputs = Vec::new();
        let mut bytes = 0;
        for file in 0..FILES {
            let path = dir.join(format!("site-{file:02}.csv"));
            bytes += write_export(&path, file as u64, mib * MIB);
            inputs.push(path);
        }
        Data {
            root,
            inputs,
            bytes,
        }
    }

    /// A fresh, empty output directory.
    fn out(&self) -> PathBuf {
        self.root.sub("out")
    }
}

/// Patients per site file: each has many rows, as in a real export.
const PATIENTS: u64 = 2_000;

/// `QUIESCE_BENCH_UNIQUE=1`: every row a new patient (no value repeats,
/// so every identifier costs an HMAC: the worst case).
fn unique() -> bool {
    std::env::var("QUIESCE_BENCH_UNIQUE").is_ok_and(|v| v == "1")
}

/// Writes the export of site `site` until `size` bytes; returns the size
/// written.
fn write_export(path: &Path, site: u64, size: u64) -> u64 {
    use std::fmt::Write as _;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(path).unwrap());
    let header =
        "patient_id,name,dob,site,instrument,submitted_at,q1,q2,q3,q4,q5,q6,q7,q8,score,notes\n";
    w.write_all(header.as_bytes()).unwrap();
    let mut written = header.len() as u64;
    let mut state = (site + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let unique = unique();
    let mut row = String::with_capacity(256);
    let mut i = 0u64;
    while written < size {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let r = state;
        let p = if unique { i } else { r % PATIENTS };
        let q: Vec<u64> = (0..8).map(|k| (r >> (20 + 3 * k)) % 5).collect();
        row.clear();
        let _ = write!(
            row,
            "P-{site:02}-{p:06},\"Lastname{p}, Given{}\",19{}-{:02}-{:02},SITE-{site:02},{},2024-{:02}-{:02}T{:02}:{:02}:00Z,{},{},{},{},{},{},{},{},{},",
            p % 97,
            40 + p % 60,
            1 + p % 12,
            1 + p % 28,
            if r.is_multiple_of(3) {
                "PHQ-9"
            } else {
                "GAD-7"
            },
            1 + (r >> 8) % 12,
            1 + (r >> 12) % 28,
            (r >> 16) % 24,
            (r >> 44) % 60,
            q[0],
            q[1],
            q[2],
            q[3],
            q[4],
            q[5],
            q[6],
            q[7],
            q.iter().sum::<u64>(),
        );
        if i.is_multiple_of(8) {
            let _ = write!(
                row,
                "\"reported \"\"mild\"\" headache, nausea; report {i}\""
            );
        } else {
            let _ = write!(row, "no adverse event in report {i}");
        }
        row.push('\n');
        w.write_all(row.as_bytes()).unwrap();
        written += row.len() as u64;
        i += 1;
    }
    w.flush().unwrap();
    written
}

/// The reference: read records, write records, `workers` threads; with
/// `durable`, each output is written aside, fsynced and renamed, as
/// quiesce does.
fn csv_copy(inputs: &[PathBuf], out: &Path, workers: usize, durable: bool) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let next = &next;
                std::thread::Builder::new()
                    .name(format!("bench-copy-{w}"))
                    .spawn_scoped(s, move || {
                        loop {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            let Some(input) = inputs.get(i) else { break };
                            let mut reader = csv::Reader::from_path(input).unwrap();
                            let target = out.join(input.file_name().unwrap());
                            let temp = out.join(".copy.tmp").with_extension(w.to_string());
                            let path = if durable { &temp } else { &target };
                            let mut writer = csv::Writer::from_path(path).unwrap();
                            writer
                                .write_byte_record(reader.byte_headers().unwrap())
                                .unwrap();
                            let mut record = csv::ByteRecord::new();
                            while reader.read_byte_record(&mut record).unwrap() {
                                writer.write_byte_record(&record).unwrap();
                            }
                            let file = writer.into_inner().unwrap();
                            if durable {
                                file.sync_all().unwrap();
                                fs::rename(&temp, &target).unwrap();
                            }
                        }
                    })
                    .unwrap()
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

/// The binary, as a user runs it.
fn quiesce(data: &Data, out: &Path, workers: usize) {
    let status = Command::new(env!("CARGO_BIN_EXE_quiesce"))
        .args(["anonymize", "-q", "--columns", "patient_id,name,dob", "-j"])
        .arg(workers.to_string())
        .arg("-o")
        .arg(out)
        .arg(data.root.join("in"))
        .env("QUIESCE_ANON_KEY", "bench-key-0123456789abcdef")
        .env_remove("QUIESCE_ANON_KEY_FILE")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .status()
        .expect("run quiesce");
    assert!(status.success(), "quiesce anonymize: {status}");
}

/// A line's name and what one run of it does, given the output directory.
type Line<'a> = (&'a str, &'a dyn Fn(&Path));

fn anonymize_8_files(c: &mut Criterion) {
    let mib = mib_per_file();
    let data = Data::generate(mib);
    println!(
        "anonymize_8_files: {FILES} files x {mib} MiB = {:.1} MiB of input, {}",
        data.bytes as f64 / MIB as f64,
        if unique() {
            "every identifier unique"
        } else {
            "2,000 patients per file"
        }
    );
    let mut group = c.benchmark_group("anonymize_8_files");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(SAMPLES)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Bytes(data.bytes));
    for workers in [1, 2] {
        let lines: [Line<'_>; 3] = [
            ("csv_copy", &|out| {
                csv_copy(&data.inputs, out, workers, false)
            }),
            ("csv_copy_fsync", &|out| {
                csv_copy(&data.inputs, out, workers, true)
            }),
            ("quiesce", &|out| quiesce(&data, out, workers)),
        ];
        for (kind, run) in lines {
            let line = format!("{kind}/{workers}");
            let mut per_iter: Vec<f64> = Vec::new();
            group.bench_function(&line, |b| {
                b.iter_custom(|n| {
                    let mut total = Duration::ZERO;
                    for _ in 0..n {
                        let out = data.out();
                        let start = Instant::now();
                        run(&out);
                        total += start.elapsed();
                    }
                    per_iter.push(total.as_secs_f64() / n.max(1) as f64);
                    total
                })
            });
            let skip = per_iter.len().saturating_sub(SAMPLES);
            let measured = &mut per_iter[skip..];
            measured.sort_by(f64::total_cmp);
            if let Some(median) = measured.get(measured.len() / 2) {
                RESULTS.lock().unwrap().push(Row {
                    line,
                    mib_s: data.bytes as f64 / MIB as f64 / median,
                });
            }
        }
    }
    group.finish();
}

fn summary(_c: &mut Criterion) {
    let results = RESULTS.lock().unwrap();
    let get = |line: &str| results.iter().find(|r| r.line == line).map(|r| r.mib_s);
    if results.is_empty() {
        return;
    }
    let ratio = |value: f64, base: Option<f64>| {
        base.map_or("-".to_string(), |b| format!("{:.2}x", value / b))
    };
    println!();
    println!("| line | MiB/s (median) | vs csv_copy | vs csv_copy_fsync | 2 workers / 1 |");
    println!("|---|---:|---:|---:|---:|");
    for row in results.iter() {
        let (kind, workers) = row.line.split_once('/').unwrap_or((&row.line, "1"));
        let scaling = if workers == "2" {
            ratio(row.mib_s, get(&format!("{kind}/1")))
        } else {
            "-".to_string()
        };
        println!(
            "| {} | {:.1} | {} | {} | {scaling} |",
            row.line,
            row.mib_s,
            ratio(row.mib_s, get(&format!("csv_copy/{workers}"))),
            ratio(row.mib_s, get(&format!("csv_copy_fsync/{workers}"))),
        );
    }
    println!(
        "Ratios against the line with the same number of workers; medians of {SAMPLES} samples."
    );
}

criterion_group!(benches, anonymize_8_files, summary);
criterion_main!(benches);

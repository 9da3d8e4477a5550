//! The command line of `quiesce anonymize`: the raw form clap parses
//! ([`Args`]) and the checked form the job runs on ([`Settings`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::columns::Columns;

/// Shown after the options in `--help`.
const AFTER_HELP: &str = "\
The key:
  A pseudonym is HMAC-SHA256(key, value) in hex, cut to 16 digits, behind
  `anon_` (e.g. anon_3f9a0c41d2b7e855). The same value and key give the same
  pseudonym in every file and every run, so de-identified exports can still
  be joined; without the key a pseudonym can be neither reversed nor
  recomputed. Values are hashed exactly as written (no trimming, no case
  folding); empty values stay empty.
  The key is the content of --key-file (a trailing newline is ignored) or
  else the value of QUIESCE_ANON_KEY, at least 16 bytes. There is no default
  key, on purpose. As ssh does with a private key, a key file that group or
  others can access is refused (unless --allow-insecure-key), and so is one
  larger than 1 KiB or that is not a regular file or a pipe. Keep it secret, and keep it: another key gives other
  pseudonyms. To make one:
      openssl rand -hex 32 > anon.key && chmod 600 anon.key

Inputs and outputs:
  Each INPUT is a CSV file or a directory, searched recursively for *.csv
  files. Outputs go under --out with the same relative paths (a directory
  input's own name is not repeated). Every file needs a header row with all
  the --columns (and --drop columns) in it. An output is written to a hidden
  temporary file beside its final name, flushed to disk, then renamed: it is
  whole or absent. Existing outputs are replaced; an input is never
  overwritten (the run is refused; files are told apart by device and
  inode, so a hard link, a bind mount or a symlink cannot hide one), and an
  --out directory inside an input directory is skipped when searching.
  A symbolic link found in an INPUT directory is read only if it points
  inside that directory (or with --follow-symlinks); links to directories
  are not followed. Names and headers read from the inputs are printed
  with control characters escaped (\\x1b), never raw.

Stopping:
  Ctrl-C, SIGTERM or --timeout stop the work between rows: the files not
  finished are removed (their temporary files), the finished ones stay, and
  the summary says which are which. A second Ctrl-C or SIGTERM exits at once
  (a temporary .*.quiesce-tmp-* file may then be left behind).

Exit status:
  0    every file was anonymized
  1    some files failed (missing column, malformed row, unreadable file...);
       the other files were written. Also: the run could not start (e.g.
       --out cannot be created)
  2    bad usage: invalid options, no key or a short key, an input that does
       not exist or holds no CSV file, an output that would overwrite an input
  3    stopped by SIGINT/SIGTERM or by --timeout before every file was done
       (takes precedence over 1)
  130  a second SIGINT (143: a second SIGTERM): exited at once

Logging goes to stderr; RUST_LOG=debug also shows each file's start and end
with the number of files in progress.

Example:
  quiesce anonymize --columns patient_id,name,dob --drop phone \\
      --key-file anon.key --out deid/ exports/";

/// Replace identifier columns of CSV exports by keyed pseudonyms
/// (HMAC-SHA256), many files at once, with bounded concurrency. Outputs
/// appear whole or not at all; Ctrl-C stops cleanly.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Identifier columns to replace by pseudonyms, by header name,
    /// comma-separated or repeated (e.g. patient_id,name,dob). Every file
    /// must have all of them, or it fails.
    #[arg(
        long,
        short = 'c',
        value_name = "COLS",
        value_delimiter = ',',
        required = true
    )]
    columns: Vec<String>,

    /// Columns to remove entirely, by header name, comma-separated or
    /// repeated. Every file must have all of them, or it fails (so a
    /// misspelt name cannot let a column through).
    #[arg(long, value_name = "COLS", value_delimiter = ',')]
    drop: Vec<String>,

    /// Output directory, created if needed. Each input file's output keeps
    /// its path relative to the INPUT it was found under.
    #[arg(long, short = 'o', value_name = "DIR")]
    out: PathBuf,

    /// How many files to process at once [default: the number of CPU
    /// cores].
    #[arg(long, short = 'j', value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    concurrency: Option<usize>,

    /// Overall deadline, counted from the start (e.g. 90s, 10m, 1h 30m).
    /// When it passes, the files not finished are stopped and removed, as
    /// on Ctrl-C, and the exit status is 3.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,

    /// File holding the key (at least 16 bytes; a trailing newline is
    /// ignored). Without it, the key is read from the QUIESCE_ANON_KEY
    /// environment variable; with neither, nothing runs.
    #[arg(long, value_name = "FILE", env = "QUIESCE_ANON_KEY_FILE")]
    key_file: Option<PathBuf>,

    /// Use a --key-file that group or others can access (by default it is
    /// refused, as ssh refuses such a private key: `chmod 600` it).
    #[arg(long)]
    allow_insecure_key: bool,

    /// Read symbolic links found in an INPUT directory that point outside
    /// it (by default they are skipped with a warning). Links to
    /// directories are never followed.
    #[arg(long)]
    follow_symlinks: bool,

    /// No progress, no per-file lines and no summary table: only the
    /// files that failed, and why the run stopped early, if it did.
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,

    /// CSV files, or directories to search recursively for *.csv files.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
}

/// The checked options the job runs on.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) columns: Columns,
    pub(crate) out: PathBuf,
    pub(crate) concurrency: usize,
    pub(crate) timeout: Option<Duration>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) allow_insecure_key: bool,
    pub(crate) follow_symlinks: bool,
    pub(crate) quiet: bool,
    pub(crate) inputs: Vec<PathBuf>,
}

/// A mistake in how the command was called: reported as `quiesce: …` with
/// exit status 2, before any file is touched.
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

impl Args {
    /// Checks what clap cannot: column lists, and fills in defaults.
    pub(crate) fn validate(self) -> Result<Settings, Usage> {
        let columns = Columns::new(self.columns, self.drop)?;
        let concurrency = self
            .concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Ok(Settings {
            columns,
            out: self.out,
            concurrency,
            timeout: self.timeout,
            key_file: self.key_file,
            allow_insecure_key: self.allow_insecure_key,
            follow_symlinks: self.follow_symlinks,
            quiet: self.quiet,
            inputs: self.inputs,
        })
    }
}

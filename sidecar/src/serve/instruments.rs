//! The instruments we know how to score: a table, not code per instrument.
//!
//! Each [`Instrument`] is data: its LOINC codes, its items (each with a
//! plain name and a LOINC code), the answer codes of its scale, its
//! severity bands and its alert rules. One scoring function reads any entry
//! of the table, so adding an instrument is adding a row.
//!
//! Registered today:
//!
//! - **PHQ-9** (LOINC panel 44249-1, total 44261-6): nine items scored 0–3,
//!   the total 0–27, bands 0–4 minimal, 5–9 mild, 10–14 moderate, 15–19
//!   moderately severe, 20–27 severe. Kroenke K, Spitzer RL, Williams JB.
//!   *The PHQ-9: validity of a brief depression severity measure.* J Gen
//!   Intern Med. 2001;16(9):606–613.
//! - **GAD-7** (LOINC panel 69737-5, total 70274-6): seven items scored
//!   0–3, the total 0–21, bands 0–4 minimal, 5–9 mild, 10–14 moderate,
//!   15–21 severe. Spitzer RL, Kroenke K, Williams JB, Löwe B. *A brief
//!   measure for assessing generalized anxiety disorder: the GAD-7.* Arch
//!   Intern Med. 2006;166(10):1092–1097.
//!
//! The rules a change must keep:
//!
//! 1. A missing required item is an error naming it (`answers.q9`:
//!    "missing"), never scored as 0: a total over fewer items would read as
//!    a milder band than the patient's.
//! 2. An answer outside the item's range is an error naming the item.
//! 3. An item is named by our plain name (`q1`…`q9`, the names our JSON
//!    reports have always used) or by its LOINC code (`44250-9`), never
//!    both in one report.
//! 4. Alert rules are evaluated on every scored report, whatever the band:
//!    PHQ-9 item 9 (self-harm, 44260-8) above 0 alerts even at a total of 1.

use std::collections::BTreeMap;

use serde::Serialize;

use super::report::Invalid;

/// A questionnaire with published scoring.
#[derive(Debug)]
pub struct Instrument {
    /// Our name for it, as reports carry it (`PHQ-9`); matched ignoring case.
    pub name: &'static str,
    /// The version of this table's entry, carried by each score so that a
    /// stored result says which rules produced it. Bumped when a band, an
    /// item or a rule changes.
    pub version: &'static str,
    /// Other names accepted for it (matched ignoring case).
    pub aliases: &'static [&'static str],
    /// The LOINC code of the panel (the questionnaire).
    pub panel: Code,
    /// The LOINC code of the total score.
    pub total: Code,
    /// The items, in the questionnaire's order.
    pub items: &'static [Item],
    /// The answer codes of the scale shared by the items, and their values.
    pub answers: &'static [Answer],
    /// The severity bands, ascending, covering 0 to the highest total.
    pub bands: &'static [Band],
    /// The alert rules.
    pub rules: &'static [Rule],
    /// Where the scoring is published.
    // Part of the table for its readers (the source of the scoring), not
    // read by the code.
    #[allow(dead_code)]
    pub citation: &'static str,
}

/// A code in a code system (LOINC here).
#[derive(Debug, Clone, Copy)]
pub struct Code {
    /// The code (`44261-6`).
    pub code: &'static str,
    /// Its display text.
    pub display: &'static str,
}

/// One item of an instrument.
#[derive(Debug)]
pub struct Item {
    /// Our plain name (`q9`).
    pub name: &'static str,
    /// Its LOINC code (`44260-8`).
    pub loinc: &'static str,
    /// What it asks.
    pub text: &'static str,
    /// The highest answer (the lowest is 0).
    pub max: u8,
    /// Whether a report without it is refused.
    pub required: bool,
}

/// An answer code of an instrument's scale and its value.
#[derive(Debug)]
pub struct Answer {
    /// The LOINC answer code (`LA6568-5`).
    pub code: &'static str,
    /// Its display text.
    // Part of the table for its readers (the scale's wording).
    #[allow(dead_code)]
    pub display: &'static str,
    /// The value it scores.
    pub value: u8,
}

/// A severity band: totals `from..=to`.
#[derive(Debug)]
pub struct Band {
    /// The lowest total in the band.
    pub from: u32,
    /// The highest total in the band.
    pub to: u32,
    /// A code for it (`moderately-severe`).
    pub code: &'static str,
    /// Its label (`moderately severe`).
    pub label: &'static str,
}

/// An alert rule.
#[derive(Debug)]
pub struct Rule {
    /// A stable id (`phq9-item9`), used in metrics and results.
    pub id: &'static str,
    /// What it means, for a person.
    pub description: &'static str,
    /// When it fires.
    pub when: When,
}

/// The condition of an alert rule.
#[derive(Debug, Clone, Copy)]
pub enum When {
    /// The named item's answer is above the value.
    ItemAbove(&'static str, u8),
    /// The total is at least the value.
    TotalAtLeast(u32),
}

/// The result of scoring a registered instrument.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Scored {
    /// The instrument's name (`PHQ-9`).
    pub instrument: &'static str,
    /// The version of the table entry that scored it.
    pub version: &'static str,
    /// The sum of the items.
    pub total: u32,
    /// The highest answer.
    pub max_item: u8,
    /// The severity band's label.
    pub band: &'static str,
    /// The severity band's code.
    pub band_code: &'static str,
    /// Whether any alert rule fired (as in the generic score).
    pub alert: bool,
    /// The rules that fired.
    pub alerts: Vec<Alert>,
}

/// An alert rule that fired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// The rule's id.
    pub rule: &'static str,
    /// What it means.
    pub description: &'static str,
    /// The item, for an item rule (our plain name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<&'static str>,
}

/// The frequency scale of the PHQ and GAD items (LOINC answer list LL358-3).
const FREQUENCY: &[Answer] = &[
    Answer {
        code: "LA6568-5",
        display: "Not at all",
        value: 0,
    },
    Answer {
        code: "LA6569-3",
        display: "Several days",
        value: 1,
    },
    Answer {
        code: "LA6570-1",
        display: "More than half the days",
        value: 2,
    },
    Answer {
        code: "LA6571-9",
        display: "Nearly every day",
        value: 3,
    },
];

const fn item(name: &'static str, loinc: &'static str, text: &'static str) -> Item {
    Item {
        name,
        loinc,
        text,
        max: 3,
        required: true,
    }
}

const fn band(from: u32, to: u32, code: &'static str, label: &'static str) -> Band {
    Band {
        from,
        to,
        code,
        label,
    }
}

/// PHQ-9 (Kroenke et al. 2001).
///
/// Alert rules: item 9 above 0 whatever the total (any endorsement of
/// thoughts of death or self-harm needs a clinician's follow-up; Kroenke et
/// al. 2001 ask for it), and a total of 20 or more (the severe band). The
/// severe rule is the band's lower bound rather than the generic
/// `--alert-total` so that the alert and the band never disagree.
pub static PHQ9: Instrument = Instrument {
    name: "PHQ-9",
    version: "1",
    aliases: &["PHQ9"],
    panel: Code {
        code: "44249-1",
        display: "PHQ-9 quick depression assessment panel [Reported.PHQ]",
    },
    total: Code {
        code: "44261-6",
        display: "Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]",
    },
    items: &[
        item(
            "q1",
            "44250-9",
            "Little interest or pleasure in doing things",
        ),
        item("q2", "44255-8", "Feeling down, depressed, or hopeless"),
        item(
            "q3",
            "44259-0",
            "Trouble falling or staying asleep, or sleeping too much",
        ),
        item("q4", "44254-1", "Feeling tired or having little energy"),
        item("q5", "44251-7", "Poor appetite or overeating"),
        item(
            "q6",
            "44258-2",
            "Feeling bad about yourself, or that you are a failure",
        ),
        item("q7", "44252-5", "Trouble concentrating on things"),
        item(
            "q8",
            "44253-3",
            "Moving or speaking so slowly that other people could have noticed, or the opposite",
        ),
        item(
            "q9",
            "44260-8",
            "Thoughts that you would be better off dead, or of hurting yourself",
        ),
    ],
    answers: FREQUENCY,
    bands: &[
        band(0, 4, "minimal", "minimal"),
        band(5, 9, "mild", "mild"),
        band(10, 14, "moderate", "moderate"),
        band(15, 19, "moderately-severe", "moderately severe"),
        band(20, 27, "severe", "severe"),
    ],
    rules: &[
        Rule {
            id: "phq9-item9",
            description: "thoughts of death or self-harm (PHQ-9 item 9 above 0)",
            when: When::ItemAbove("q9", 0),
        },
        Rule {
            id: "phq9-severe",
            description: "severe depressive symptoms (PHQ-9 total 20 or more)",
            when: When::TotalAtLeast(20),
        },
    ],
    citation: "Kroenke K, Spitzer RL, Williams JB. The PHQ-9: validity of a brief depression \
               severity measure. J Gen Intern Med. 2001;16(9):606-613.",
};

/// GAD-7 (Spitzer et al. 2006). Alert rule: a total of 15 or more (the
/// severe band).
pub static GAD7: Instrument = Instrument {
    name: "GAD-7",
    version: "1",
    aliases: &["GAD7"],
    panel: Code {
        code: "69737-5",
        display: "Generalized anxiety disorder 7 item (GAD-7)",
    },
    total: Code {
        code: "70274-6",
        display: "Generalized anxiety disorder 7 item (GAD-7) total score [Reported.PHQ]",
    },
    items: &[
        item("q1", "69725-0", "Feeling nervous, anxious or on edge"),
        item(
            "q2",
            "68509-9",
            "Not being able to stop or control worrying",
        ),
        item("q3", "69733-4", "Worrying too much about different things"),
        item("q4", "69734-2", "Trouble relaxing"),
        item(
            "q5",
            "69735-9",
            "Being so restless that it is hard to sit still",
        ),
        item("q6", "69689-8", "Becoming easily annoyed or irritable"),
        item(
            "q7",
            "69736-7",
            "Feeling afraid as if something awful might happen",
        ),
    ],
    answers: FREQUENCY,
    bands: &[
        band(0, 4, "minimal", "minimal"),
        band(5, 9, "mild", "mild"),
        band(10, 14, "moderate", "moderate"),
        band(15, 21, "severe", "severe"),
    ],
    rules: &[Rule {
        id: "gad7-severe",
        description: "severe anxiety symptoms (GAD-7 total 15 or more)",
        when: When::TotalAtLeast(15),
    }],
    citation: "Spitzer RL, Kroenke K, Williams JB, Lowe B. A brief measure for assessing \
               generalized anxiety disorder: the GAD-7. Arch Intern Med. 2006;166(10):1092-1097.",
};

/// The registry.
pub static INSTRUMENTS: [&Instrument; 2] = [&PHQ9, &GAD7];

/// The registered instrument named `instrument`: by our name or an alias
/// (ignoring case and surrounding whitespace), by its panel's LOINC code,
/// or by a canonical URL whose last path segment is one of those
/// (`http://loinc.org/q/44249-1`, `https://example.org/Questionnaire/phq-9`;
/// a `|version` suffix is ignored).
pub fn find(instrument: &str) -> Option<&'static Instrument> {
    let name = instrument.trim();
    let name = name.split_once('|').map_or(name, |(url, _version)| url);
    let name = name.trim_end_matches('/');
    let last = name.rsplit('/').next().unwrap_or(name);
    INSTRUMENTS
        .iter()
        .copied()
        .find(|i| i.is_named(name) || (last != name && i.is_named(last)))
}

/// Checks `answers` against `instrument` when it is registered; any answers
/// pass for an instrument we do not know (generic scoring).
///
/// # Errors
///
/// Every problem found (rules 1–3 of the module), each naming its field.
pub fn check(instrument: &str, answers: &BTreeMap<String, u8>) -> Result<(), Vec<Invalid>> {
    match find(instrument) {
        Some(registered) => registered.answers_by_item(answers).map(|_| ()),
        None => Ok(()),
    }
}

impl Instrument {
    fn is_named(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.panel.code == name
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }

    /// The item named `name`, by our plain name or its LOINC code.
    pub fn item(&self, name: &str) -> Option<&'static Item> {
        self.items
            .iter()
            .find(|i| i.name == name || i.loinc == name)
    }

    /// The value of a LOINC answer code of this instrument's scale.
    pub fn answer_value(&self, code: &str) -> Option<u8> {
        self.answers
            .iter()
            .find(|a| a.code == code)
            .map(|a| a.value)
    }

    /// The band of `total` (the last band for a total above the table, which
    /// a checked report cannot have).
    pub fn band(&self, total: u32) -> &'static Band {
        let bands = self.bands;
        bands
            .iter()
            .find(|b| (b.from..=b.to).contains(&total))
            .unwrap_or(&bands[bands.len() - 1])
    }

    /// Scores `answers` (keyed by plain names or LOINC codes).
    ///
    /// # Errors
    ///
    /// Every problem found, each naming its field: a required item missing
    /// (never scored as 0), an answer out of range, an unknown item, an item
    /// given under both its names.
    pub fn score(&self, answers: &BTreeMap<String, u8>) -> Result<Scored, Vec<Invalid>> {
        let by_item = self.answers_by_item(answers)?;
        let total: u32 = by_item.values().map(|&(a, _)| u32::from(a)).sum();
        let max_item = by_item.values().map(|&(a, _)| a).max().unwrap_or(0);
        let alerts: Vec<Alert> = self
            .rules
            .iter()
            .filter(|rule| match rule.when {
                When::ItemAbove(item, above) => by_item.get(item).is_some_and(|&(a, _)| a > above),
                When::TotalAtLeast(at_least) => total >= at_least,
            })
            .map(|rule| Alert {
                rule: rule.id,
                description: rule.description,
                item: match rule.when {
                    When::ItemAbove(item, _) => Some(item),
                    When::TotalAtLeast(_) => None,
                },
            })
            .collect();
        let band = self.band(total);
        Ok(Scored {
            instrument: self.name,
            version: self.version,
            total,
            max_item,
            band: band.label,
            band_code: band.code,
            alert: !alerts.is_empty(),
            alerts,
        })
    }

    /// The answers keyed by the items' plain names, each with the key it
    /// was given under; or every problem found.
    fn answers_by_item<'a>(
        &self,
        answers: &'a BTreeMap<String, u8>,
    ) -> Result<BTreeMap<&'static str, (u8, &'a str)>, Vec<Invalid>> {
        let mut problems = Vec::new();
        let mut by_item = BTreeMap::new();
        for (key, &answer) in answers {
            let field = format!("answers.{key}");
            let Some(item) = self.item(key) else {
                problems.push(invalid(field, format!("not an item of {}", self.name)));
                continue;
            };
            if answer > item.max {
                problems.push(invalid(
                    field.clone(),
                    format!("must be an integer from 0 to {}", item.max),
                ));
            }
            // Rule 3: one name per item.
            if let Some((_, other)) = by_item.insert(item.name, (answer, key.as_str())) {
                problems.push(invalid(
                    field,
                    format!("the same item as answers.{other} (one name per item)"),
                ));
            }
        }
        for item in self.items.iter().filter(|i| i.required) {
            if !by_item.contains_key(item.name) {
                // Rule 1: named, never scored as 0.
                problems.push(invalid(format!("answers.{}", item.name), "missing"));
            }
        }
        if problems.is_empty() {
            Ok(by_item)
        } else {
            Err(problems)
        }
    }
}

fn invalid(field: String, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers `q1..=qN` summing to `total`, filled from the first item,
    /// with item 9 (when there is one) left at `q9`.
    fn answers(n: usize, mut total: u32, q9: u8) -> BTreeMap<String, u8> {
        let mut out = BTreeMap::new();
        for i in 1..=n {
            let value = if i == 9 {
                q9
            } else {
                let v = total.min(3) as u8;
                total -= u32::from(v);
                v
            };
            out.insert(format!("q{i}"), value);
        }
        assert_eq!(total, 0, "the test asked for more than the items hold");
        out
    }

    fn fields(problems: &[Invalid]) -> Vec<&str> {
        problems.iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn instruments_are_found_by_name_alias_code_and_canonical() {
        for name in [
            "PHQ-9",
            "phq-9",
            " Phq-9 ",
            "PHQ9",
            "44249-1",
            "http://loinc.org/q/44249-1",
            "https://example.org/fhir/Questionnaire/phq-9|2.0",
            "Questionnaire/PHQ-9/",
        ] {
            assert_eq!(find(name).map(|i| i.name), Some("PHQ-9"), "{name}");
        }
        for name in ["GAD-7", "gad7", "69737-5", "http://loinc.org/q/69737-5"] {
            assert_eq!(find(name).map(|i| i.name), Some("GAD-7"), "{name}");
        }
        for name in ["PHQ-2", "", "44261-6", "http://loinc.org/q/", "PHQ-9x"] {
            assert!(find(name).is_none(), "{name}");
        }
    }

    #[test]
    fn the_tables_are_consistent() {
        for instrument in INSTRUMENTS {
            let highest: u32 = instrument.items.iter().map(|i| u32::from(i.max)).sum();
            // Bands are contiguous from 0 to the highest total.
            let mut next = 0;
            for band in instrument.bands {
                assert_eq!(band.from, next, "{}", instrument.name);
                assert!(band.to >= band.from);
                next = band.to + 1;
            }
            assert_eq!(next - 1, highest, "{}", instrument.name);
            for rule in instrument.rules {
                if let When::ItemAbove(item, _) = rule.when {
                    assert!(instrument.item(item).is_some(), "{}", rule.id);
                }
            }
            let mut names: Vec<_> = instrument.items.iter().map(|i| i.name).collect();
            names.dedup();
            assert_eq!(names.len(), instrument.items.len());
        }
        assert_eq!((PHQ9.items.len(), GAD7.items.len()), (9, 7));
        assert_eq!(PHQ9.item("q9").unwrap().loinc, "44260-8");
    }

    #[test]
    fn phq9_bands_at_every_boundary() {
        let cases = [
            (0, "minimal"),
            (4, "minimal"),
            (5, "mild"),
            (9, "mild"),
            (10, "moderate"),
            (14, "moderate"),
            (15, "moderately severe"),
            (19, "moderately severe"),
            (20, "severe"),
            (24, "severe"),
        ];
        for (total, label) in cases {
            let scored = PHQ9.score(&answers(9, total, 0)).unwrap();
            assert_eq!((scored.total, scored.band), (total, label), "{total}");
            // Below 20 and without item 9, no alert; from 20, the severe rule.
            let rules: Vec<_> = scored.alerts.iter().map(|a| a.rule).collect();
            if total >= 20 {
                assert_eq!(rules, ["phq9-severe"], "{total}");
            } else {
                assert!(rules.is_empty(), "{total}: {rules:?}");
            }
            assert_eq!(scored.alert, total >= 20);
        }
        let all_threes: BTreeMap<String, u8> = (1..=9).map(|i| (format!("q{i}"), 3)).collect();
        let top = PHQ9.score(&all_threes).unwrap();
        assert_eq!((top.total, top.band, top.max_item), (27, "severe", 3));
        assert_eq!(top.alerts.len(), 2);
    }

    #[test]
    fn gad7_bands_at_every_boundary() {
        for (total, label, alert) in [
            (0, "minimal", false),
            (4, "minimal", false),
            (5, "mild", false),
            (9, "mild", false),
            (10, "moderate", false),
            (14, "moderate", false),
            (15, "severe", true),
            (21, "severe", true),
        ] {
            let scored = GAD7.score(&answers(7, total, 0)).unwrap();
            assert_eq!(
                (scored.total, scored.band, scored.alert),
                (total, label, alert)
            );
            if alert {
                assert_eq!(scored.alerts[0].rule, "gad7-severe");
                assert_eq!(scored.alerts[0].item, None);
            }
        }
    }

    #[test]
    fn item_9_alerts_at_a_total_of_1() {
        let scored = PHQ9.score(&answers(9, 0, 1)).unwrap();
        assert_eq!((scored.total, scored.band), (1, "minimal"));
        assert!(scored.alert);
        assert_eq!(
            scored.alerts,
            [Alert {
                rule: "phq9-item9",
                description: PHQ9.rules[0].description,
                item: Some("q9"),
            }]
        );
        let json = serde_json::to_value(&scored).unwrap();
        assert_eq!(json["alerts"][0]["item"], "q9");
        assert_eq!(json["version"], "1");
        assert_eq!(json["instrument"], "PHQ-9");
    }

    #[test]
    fn missing_items_are_named_never_scored_as_0() {
        let mut partial = answers(9, 3, 0);
        partial.remove("q4");
        partial.remove("q9");
        let problems = PHQ9.score(&partial).unwrap_err();
        assert_eq!(fields(&problems), ["answers.q4", "answers.q9"]);
        assert!(problems.iter().all(|p| p.message == "missing"));
        assert_eq!(check("phq-9", &partial).unwrap_err(), problems);
    }

    #[test]
    fn out_of_range_and_unknown_items_are_refused() {
        let mut bad = answers(9, 2, 0);
        bad.insert("q2".into(), 4);
        bad.insert("q10".into(), 1);
        let problems = PHQ9.score(&bad).unwrap_err();
        assert_eq!(fields(&problems), ["answers.q10", "answers.q2"]);
        assert_eq!(problems[1].message, "must be an integer from 0 to 3");
        // Unknown instruments are not checked (generic scoring).
        assert_eq!(check("PHQ-2", &bad), Ok(()));
    }

    #[test]
    fn items_may_be_named_by_their_loinc_codes() {
        let mut coded: BTreeMap<String, u8> = PHQ9
            .items
            .iter()
            .map(|i| (i.loinc.to_string(), 1))
            .collect();
        let scored = PHQ9.score(&coded).unwrap();
        assert_eq!(scored.total, 9);
        assert_eq!(scored.alerts[0].item, Some("q9"));
        // One item under both names is refused.
        coded.insert("q1".into(), 1);
        let problems = PHQ9.score(&coded).unwrap_err();
        assert_eq!(fields(&problems), ["answers.q1"]);
        assert_eq!(
            PHQ9.answer_value("LA6571-9"),
            Some(3),
            "LOINC answer codes map to values"
        );
        assert_eq!(PHQ9.answer_value("LA6572-7"), None);
    }
}

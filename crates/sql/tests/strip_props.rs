//! Properties of the literal-stripping pre-normalizer.

use pgopt_sql::{reads_clock, strip_literals};
use proptest::prelude::*;

/// Non-literal tokens: keywords, identifiers, quoted identifiers, operators,
/// punctuation, parameters. (`in` is left out: IN lists of literals collapse
/// on purpose, see the unit tests.)
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("select".to_string()),
        Just("from".to_string()),
        Just("where".to_string()),
        Just("limit".to_string()),
        Just("and".to_string()),
        Just("for update".to_string()),
        "[a-z_][a-z0-9_]{0,6}",
        "\"[A-Za-z ]{1,5}\"",
        prop_oneof![
            Just("="),
            Just("<"),
            Just(">="),
            Just("<>"),
            Just("+"),
            Just("-"),
            Just("*"),
            Just(","),
            Just("("),
            Just(")"),
            Just("."),
            Just("::"),
            Just(";"),
            Just("||"),
        ]
        .prop_map(str::to_string),
        (1u8..20).prop_map(|n| format!("${n}")),
    ]
}

/// A string's value that does not read the clock: 'now', 'today'… are kept in the key
/// on purpose (see `clock_literals_stay_in_the_key`).
fn value(pattern: &'static str) -> impl Strategy<Value = String> {
    pattern.prop_filter("clock words are kept in the key", |s| !reads_clock(s))
}

/// A literal of some form with a value.
fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u32>().prop_map(|n| n.to_string()),
        (any::<u16>(), any::<u16>()).prop_map(|(a, b)| format!("{a}.{b}")),
        value("[a-z' ]{0,8}").prop_map(|s| format!("'{}'", s.replace('\'', "''"))),
        value("[a-z]{0,8}").prop_map(|s| format!("$${s}$$")),
        value("[a-z]{0,8}").prop_map(|s| format!("E'{s}'")),
    ]
}

#[derive(Debug, Clone)]
enum Tok {
    Word(String),
    Lit,
}

fn template() -> impl Strategy<Value = Vec<Tok>> {
    prop::collection::vec(
        prop_oneof![3 => word().prop_map(Tok::Word), 1 => Just(Tok::Lit)],
        1..16,
    )
}

fn render(template: &[Tok], literals: &[String]) -> String {
    let mut lits = literals.iter().cycle();
    template
        .iter()
        .map(|t| match t {
            Tok::Word(w) => w.clone(),
            Tok::Lit => lits.next().cloned().unwrap_or_else(|| "1".into()),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any body, whatever its characters: an answer, never a panic.
    #[test]
    fn reading_procedural_code_for_settings_never_panics(body in "\\PC{0,60}", word in "(set|reset|;|'| |é)*") {
        let text = format!("{word}{body}{word}");
        let _ = pgopt_sql::settings_set_by(&text);
        let _ = pgopt_sql::settings_set_by_other(&text);
        let _ = pgopt_sql::body_words(&text);
    }

    #[test]
    fn never_panics_on_arbitrary_text(s in any::<String>()) {
        let stripped = strip_literals(&s);
        for r in stripped.literals() {
            prop_assert!(s.get(r.clone()).is_some());
        }
    }

    #[test]
    fn never_panics_on_sql_like_bytes(s in "[-'\"$/*eEuU&xX0-9a-z.;()\n\\\\ ]{0,40}") {
        let _ = strip_literals(&s);
    }

    #[test]
    fn literal_values_do_not_change_the_key(
        t in template(),
        a in prop::collection::vec(literal(), 1..8),
        b in prop::collection::vec(literal(), 1..8),
    ) {
        let (x, y) = (render(&t, &a), render(&t, &b));
        prop_assert_eq!(strip_literals(&x).key().to_vec(), strip_literals(&y).key().to_vec(), "{} vs {}", x, y);
    }

    #[test]
    fn clock_literals_stay_in_the_key(
        t in template(),
        a in prop::collection::vec(literal(), 1..8),
        clock in prop_oneof![Just("now"), Just("today"), Just("Tomorrow"), Just(" yesterday ")],
        form in 0..3usize,
    ) {
        // The first literal reads the clock: the key must differ from the same
        // statement's with a plain value there.
        let mut t = t;
        if !t.iter().any(|x| matches!(x, Tok::Lit)) {
            t.push(Tok::Lit);
        }
        let lit = match form {
            0 => format!("'{clock}'"),
            1 => format!("$${clock}$$"),
            _ => format!("E'{clock}'"),
        };
        let clocked: Vec<String> = std::iter::once(lit).chain(a.iter().skip(1).cloned()).collect();
        let (x, y) = (render(&t, &a), render(&t, &clocked));
        prop_assert_ne!(strip_literals(&x).key().to_vec(), strip_literals(&y).key().to_vec(), "{} vs {}", x, y);
    }

    #[test]
    fn different_non_literal_tokens_give_different_keys(
        t in template(),
        u in template(),
        a in prop::collection::vec(literal(), 1..8),
    ) {
        let words = |t: &[Tok]| -> Vec<Option<String>> {
            t.iter()
                .map(|x| match x { Tok::Word(w) => Some(w.to_lowercase()), Tok::Lit => None })
                .collect()
        };
        prop_assume!(words(&t) != words(&u));
        let (x, y) = (render(&t, &a), render(&u, &a));
        prop_assert_ne!(strip_literals(&x).key().to_vec(), strip_literals(&y).key().to_vec(), "{} vs {}", x, y);
    }
}

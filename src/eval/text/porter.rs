//! The Porter stemmer exactly as NLTK 3.10's `nltk.stem.porter.PorterStemmer()` runs it in
//! its default mode (`NLTK_EXTENSIONS`), which is the stemmer `rouge_score`'s tokenizer uses
//! with `use_stemmer=True`. A line-by-line port of `nltk/stem/porter.py`: the same steps, the
//! same rule lists in the same order (the first rule whose suffix matches decides, even when
//! its condition fails), NLTK's irregular forms and its deviations from the 1980 paper (`ies`
//! and `ied` of four letters, `y -> i` only after a consonant, `alli`, `fulli`, `logi`, the
//! two-letter `*o`). Words are sequences of Unicode scalar values, as Python's `str` is.

/// NLTK's irregular forms: word → stem, looked up before any step.
const IRREGULAR: [(&str, &str); 16] = [
    ("sky", "sky"),
    ("skies", "sky"),
    ("dying", "die"),
    ("lying", "lie"),
    ("tying", "tie"),
    ("news", "news"),
    ("innings", "inning"),
    ("inning", "inning"),
    ("outings", "outing"),
    ("outing", "outing"),
    ("cannings", "canning"),
    ("canning", "canning"),
    ("howe", "howe"),
    ("proceed", "proceed"),
    ("exceed", "exceed"),
    ("succeed", "succeed"),
];

/// `PorterStemmer().stem(word)`: lowercases, then strips suffixes.
pub fn stem(word: &str) -> String {
    let lower = word.to_lowercase();
    if let Some((_, s)) = IRREGULAR.iter().find(|(w, _)| *w == lower) {
        return s.to_string();
    }
    // NLTK compares the length of the word as given, not of its lowercase form.
    if word.chars().count() <= 2 {
        return lower;
    }
    let mut w: Vec<char> = lower.chars().collect();
    w = step1a(w);
    w = step1b(w);
    w = step1c(w);
    w = step2(w);
    w = step3(w);
    w = step4(w);
    w = step5a(w);
    w = step5b(w);
    w.into_iter().collect()
}

type Word = Vec<char>;
type Cond<'a> = &'a dyn Fn(&[char]) -> bool;

fn is_vowel(c: char) -> bool {
    matches!(c, 'a' | 'e' | 'i' | 'o' | 'u')
}

/// One flag per letter, `true` for a consonant: a `y` is a consonant when it starts the word
/// or follows a vowel (`_consonant_flags`, equal to `_is_consonant` at every position).
fn consonant_flags(w: &[char]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let cons = if is_vowel(c) {
            false
        } else if c == 'y' {
            i == 0 || !flags[i - 1]
        } else {
            true
        };
        flags.push(cons);
    }
    flags
}

fn is_consonant(w: &[char], i: usize) -> bool {
    consonant_flags(&w[..=i])[i]
}

/// m in `[C](VC){m}[V]`: the number of vowel→consonant transitions.
fn measure(stem: &[char]) -> usize {
    consonant_flags(stem).windows(2).filter(|p| !p[0] && p[1]).count()
}

fn has_positive_measure(stem: &[char]) -> bool {
    measure(stem) > 0
}

fn contains_vowel(stem: &[char]) -> bool {
    !consonant_flags(stem).iter().all(|&c| c)
}

/// `*d`: ends with a double consonant.
fn ends_double_consonant(w: &[char]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1)
}

/// `*o`: ends consonant-vowel-consonant, the last not w, x or y; NLTK adds a two-letter
/// vowel-consonant word.
fn ends_cvc(w: &[char]) -> bool {
    let n = w.len();
    (n >= 3
        && is_consonant(w, n - 3)
        && !is_consonant(w, n - 2)
        && is_consonant(w, n - 1)
        && !matches!(w[n - 1], 'w' | 'x' | 'y'))
        || (n == 2 && !is_consonant(w, 0) && is_consonant(w, 1))
}

fn ends_with(w: &[char], suffix: &str) -> bool {
    let s: Vec<char> = suffix.chars().collect();
    w.len() >= s.len() && w[w.len() - s.len()..] == s[..]
}

/// `word[:-len(suffix)] + replacement` (the caller checked that `word` ends with `suffix`).
fn replace_suffix(w: &[char], suffix: &str, replacement: &str) -> Word {
    let keep = w.len() - suffix.chars().count();
    w[..keep].iter().copied().chain(replacement.chars()).collect()
}

/// `_apply_rule_list` without the `*d` rule (only step 1b has it, written out there): the first
/// rule whose suffix matches is applied if its condition holds on the stem, else the word stays.
fn apply_rules(w: Word, rules: &[(&str, &str, Cond)]) -> Word {
    for (suffix, replacement, cond) in rules {
        if ends_with(&w, suffix) {
            let stem = replace_suffix(&w, suffix, "");
            return if cond(&stem) { replace_suffix(&w, suffix, replacement) } else { w };
        }
    }
    w
}

fn always(_: &[char]) -> bool {
    true
}

fn step1a(w: Word) -> Word {
    if ends_with(&w, "ies") && w.len() == 4 {
        return replace_suffix(&w, "ies", "ie");
    }
    apply_rules(w, &[("sses", "ss", &always), ("ies", "i", &always), ("ss", "ss", &always), ("s", "", &always)])
}

fn step1b(w: Word) -> Word {
    if ends_with(&w, "ied") {
        return replace_suffix(&w, "ied", if w.len() == 4 { "ie" } else { "i" });
    }
    if ends_with(&w, "eed") {
        let stem = replace_suffix(&w, "eed", "");
        return if measure(&stem) > 0 { replace_suffix(&w, "eed", "ee") } else { w };
    }
    let mut stem = None;
    for suffix in ["ed", "ing"] {
        if ends_with(&w, suffix) {
            let s = replace_suffix(&w, suffix, "");
            if contains_vowel(&s) {
                stem = Some(s);
                break;
            }
        }
    }
    let Some(s) = stem else { return w };
    for (suffix, replacement) in [("at", "ate"), ("bl", "ble"), ("iz", "ize")] {
        if ends_with(&s, suffix) {
            return replace_suffix(&s, suffix, replacement);
        }
    }
    // `*d` (and not *l, *s or *z) → one letter; `s` contains a vowel, so it is not empty.
    if ends_double_consonant(&s) {
        let last = s[s.len() - 1];
        if matches!(last, 'l' | 's' | 'z') {
            return s;
        }
        return s[..s.len() - 1].to_vec();
    }
    // The rule with the empty suffix: (m=1 and *o) → E.
    if measure(&s) == 1 && ends_cvc(&s) {
        let mut s = s;
        s.push('e');
        return s;
    }
    s
}

/// NLTK's y → i: only after a consonant that is not the whole stem (`happy` → `happi`,
/// `enjoy` stays).
fn step1c(w: Word) -> Word {
    apply_rules(w, &[("y", "i", &|stem: &[char]| stem.len() > 1 && is_consonant(stem, stem.len() - 1))])
}

fn step2(w: Word) -> Word {
    if ends_with(&w, "alli") && has_positive_measure(&replace_suffix(&w, "alli", "")) {
        return step2(replace_suffix(&w, "alli", "al"));
    }
    let m = &has_positive_measure;
    let whole = w.clone();
    // NLTK's `logi` rule measures the word less `ogi` (its lambda ignores the stem).
    let logi = move |_: &[char]| has_positive_measure(&whole[..whole.len().saturating_sub(3)]);
    apply_rules(
        w,
        &[
            ("ational", "ate", m),
            ("tional", "tion", m),
            ("enci", "ence", m),
            ("anci", "ance", m),
            ("izer", "ize", m),
            ("bli", "ble", m),
            ("alli", "al", m),
            ("entli", "ent", m),
            ("eli", "e", m),
            ("ousli", "ous", m),
            ("ization", "ize", m),
            ("ation", "ate", m),
            ("ator", "ate", m),
            ("alism", "al", m),
            ("iveness", "ive", m),
            ("fulness", "ful", m),
            ("ousness", "ous", m),
            ("aliti", "al", m),
            ("iviti", "ive", m),
            ("biliti", "ble", m),
            ("fulli", "ful", m),
            ("logi", "log", &logi),
        ],
    )
}

fn step3(w: Word) -> Word {
    let m = &has_positive_measure;
    apply_rules(
        w,
        &[
            ("icate", "ic", m),
            ("ative", "", m),
            ("alize", "al", m),
            ("iciti", "ic", m),
            ("ical", "ic", m),
            ("ful", "", m),
            ("ness", "", m),
        ],
    )
}

fn step4(w: Word) -> Word {
    let m = &|stem: &[char]| measure(stem) > 1;
    let ion = &|stem: &[char]| measure(stem) > 1 && matches!(stem.last(), Some('s' | 't'));
    apply_rules(
        w,
        &[
            ("al", "", m),
            ("ance", "", m),
            ("ence", "", m),
            ("er", "", m),
            ("ic", "", m),
            ("able", "", m),
            ("ible", "", m),
            ("ant", "", m),
            ("ement", "", m),
            ("ment", "", m),
            ("ent", "", m),
            ("ion", "", ion),
            ("ou", "", m),
            ("ism", "", m),
            ("ate", "", m),
            ("iti", "", m),
            ("ous", "", m),
            ("ive", "", m),
            ("ize", "", m),
        ],
    )
}

fn step5a(w: Word) -> Word {
    if ends_with(&w, "e") {
        let stem = &w[..w.len() - 1];
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            return stem.to_vec();
        }
    }
    w
}

/// (m > 1 and *d and *L) → one letter; NLTK measures the word less its last letter.
fn step5b(w: Word) -> Word {
    if ends_with(&w, "ll") && measure(&w[..w.len() - 1]) > 1 {
        return w[..w.len() - 1].to_vec();
    }
    w
}

#[cfg(test)]
mod tests {
    use super::stem;

    /// The examples of NLTK's docstrings and the paper, as NLTK stems them.
    #[test]
    fn paper_examples() {
        for (w, s) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("sing", "sing"),
            ("hopping", "hop"),
            ("falling", "fall"),
            ("filing", "file"),
            ("happy", "happi"),
            ("enjoy", "enjoy"),
            ("relational", "relat"),
            ("generously", "gener"),
            ("running", "run"),
            ("dying", "die"),
            ("skies", "sky"),
            ("controll", "control"),
            ("a", "a"),
        ] {
            assert_eq!(stem(w), s, "{w}");
        }
    }
}

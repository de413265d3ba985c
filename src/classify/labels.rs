//! Labels: what a row's label field holds ([`RawLabel`]), the label list and problem type of a
//! run ([`LabelSpace`], chosen as transformers' examples and `Trainer` users expect), and the
//! mapping of one raw label to its ids ([`ClsLabel`]).
//!
//! - A name (string) is looked up in the list. An integer is looked up by name when the list
//!   has integer names ("0", "1", … — what integer data gets by default, or star ratings "1" …
//!   "5"), else it is the id itself (0-based, as `datasets`' `ClassLabel` stores labels). A
//!   `ClassLabel` column of a `save_to_disk` directory gives its names.
//! - CSV cells are text: a cell that reads as an integer or a number counts as one (as `pandas`
//!   and `datasets` infer the column type), a cell holding a JSON list as a list.
//! - Default list: the `ClassLabel` names, else integer labels `0..=max` named "0", "1", …,
//!   else the distinct names of the training data, sorted.
//! - Problem type, when the recipe leaves it unset (transformers' inference): one label →
//!   regression; lists → multi-label; numbers with a fraction → regression; else single-label.

use serde_json::Value;

use super::config::ClassificationTaskConfig;
use crate::error::{Error, Result};
use crate::models::heads::ProblemType;
use crate::sft::read::kind;

/// A scalar label as the data holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Name(String),
    Int(i64),
    /// A number with a fraction (or written as one: `1.0`), with its JSON text.
    Float(f64, String),
    /// An id of a `ClassLabel` column and its name there.
    Class(usize, String),
}

/// A row's label field as read.
#[derive(Debug, Clone, PartialEq)]
pub enum RawLabel {
    One(Scalar),
    List(Vec<Scalar>),
}

/// A training example's target: a class id (single-label), a multi-hot row (multi-label) or a
/// value (regression).
#[derive(Debug, Clone, PartialEq)]
pub enum ClsLabel {
    Class(usize),
    Multi(Vec<bool>),
    Value(f64),
}

impl Scalar {
    /// The label's name as text ("3", "0.5", "positive").
    pub fn name(&self) -> String {
        match self {
            Scalar::Name(s) | Scalar::Class(_, s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(_, text) => text.clone(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Scalar::Name(s) | Scalar::Class(_, s) => format!("{s:?}"),
            other => other.name(),
        }
    }
}

fn scalar(v: &Value, csv: bool, class_names: Option<&[String]>) -> std::result::Result<Scalar, String> {
    match v {
        Value::String(s) if csv => Ok(if let Ok(i) = s.trim().parse::<i64>() {
            Scalar::Int(i)
        } else if let Some(x) = s.trim().parse::<f64>().ok().filter(|x| x.is_finite()) {
            Scalar::Float(x, s.trim().to_string())
        } else {
            Scalar::Name(s.clone())
        }),
        Value::String(s) => Ok(Scalar::Name(s.clone())),
        Value::Number(n) => match (n.as_i64(), class_names) {
            (Some(i), Some(names)) => {
                let name = usize::try_from(i).ok().and_then(|i| names.get(i));
                name.map(|name| Scalar::Class(i as usize, name.clone()))
                    .ok_or_else(|| format!("label {i} is not an id of the column's ClassLabel names {names:?}"))
            }
            (Some(i), None) => Ok(Scalar::Int(i)),
            (None, _) => Ok(Scalar::Float(n.as_f64().unwrap_or(f64::NAN), n.to_string())),
        },
        other => Err(format!("expected a label name, an integer, a number or a list of labels, found {}", kind(other))),
    }
}

/// Reads a label field. `csv`: the value is a CSV cell (typed from its text); `class_names`:
/// the column's `ClassLabel` names (integers are their ids).
pub fn parse(v: &Value, csv: bool, class_names: Option<&[String]>) -> std::result::Result<RawLabel, String> {
    match v {
        Value::Array(items) => items.iter().map(|i| scalar(i, false, class_names)).collect::<std::result::Result<_, _>>().map(RawLabel::List),
        Value::String(s) if csv && s.trim_start().starts_with('[') => match serde_json::from_str::<Value>(s) {
            Ok(list @ Value::Array(_)) => parse(&list, false, class_names),
            _ => Ok(RawLabel::One(Scalar::Name(s.clone()))),
        },
        other => scalar(other, csv, class_names).map(RawLabel::One),
    }
}

/// The labels of a run and how raw labels map onto them.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSpace {
    /// Names in id order.
    pub names: Vec<String>,
    pub problem_type: ProblemType,
    /// Where the names came from, for messages ("task.labels", "the model's id2label").
    pub source: String,
}

impl LabelSpace {
    /// A fixed list (a model's `id2label`, `task.labels`) with its problem type.
    pub fn fixed(names: Vec<String>, problem_type: ProblemType, source: &str) -> Result<LabelSpace> {
        if names.is_empty() {
            return Err(Error::Input(format!("{source}: no labels")));
        }
        if let Some((i, l)) = names.iter().enumerate().find(|(i, l)| names[..*i].contains(l)) {
            return Err(Error::Input(format!("{source}: label {l:?} is listed twice (ids {} and {i})", names.iter().position(|x| x == l).unwrap_or(0))));
        }
        Ok(LabelSpace { names, problem_type, source: source.to_string() })
    }

    /// The run's labels from `[task]` and the training labels (see the module docs).
    /// `class_names`: the training column's `ClassLabel` names, if any.
    pub fn resolve(task: &ClassificationTaskConfig, train: &[&RawLabel], class_names: Option<&[String]>) -> Result<LabelSpace> {
        let scalars = || train.iter().flat_map(|l| match l {
            RawLabel::One(s) => std::slice::from_ref(s).iter(),
            RawLabel::List(v) => v.iter(),
        });
        let problem_type = match task.problem_type {
            Some(p) => p.into(),
            None if task.labels.as_ref().is_some_and(|l| l.len() == 1) => ProblemType::Regression,
            None if train.iter().any(|l| matches!(l, RawLabel::List(_))) => ProblemType::MultiLabel,
            None if scalars().any(|s| matches!(s, Scalar::Float(..))) && !scalars().any(|s| matches!(s, Scalar::Name(_))) => ProblemType::Regression,
            None => ProblemType::SingleLabel,
        };
        if let Some(names) = &task.labels {
            if problem_type == ProblemType::Regression && names.len() != 1 {
                return Err(Error::Input(format!("task.labels: regression has one output, its name; {} labels are listed", names.len())));
            }
            return LabelSpace::fixed(names.clone(), problem_type, "task.labels");
        }
        let (names, source) = match (problem_type, class_names) {
            (ProblemType::Regression, _) => (vec!["LABEL_0".to_string()], "the regression default"),
            (_, Some(names)) => (names.to_vec(), "the data's ClassLabel names"),
            _ if scalars().all(|s| matches!(s, Scalar::Int(_))) && scalars().next().is_some() => {
                let max = scalars().filter_map(|s| if let Scalar::Int(i) = s { Some(*i) } else { None }).max().unwrap_or(0);
                ((0..=max.max(0)).map(|i| i.to_string()).collect(), "the integer labels of the training data, 0..=max")
            }
            _ => {
                let mut names: Vec<String> = scalars().map(Scalar::name).collect();
                names.sort();
                names.dedup();
                (names, "the sorted labels of the training data")
            }
        };
        if problem_type == ProblemType::SingleLabel && names.len() < 2 {
            return Err(Error::Input(format!(
                "single-label classification needs at least 2 labels, {source} are {names:?}: list every label in task.labels \
                 (one label means regression), or set task.problem_type"
            )));
        }
        LabelSpace::fixed(names, problem_type, source)
    }

    /// Whether integers are looked up by name (the list has integer names).
    fn ints_by_name(&self) -> bool {
        self.names.iter().any(|n| n.parse::<i64>().is_ok())
    }

    /// Whether the names are transformers' defaults `LABEL_0`, `LABEL_1`, …
    fn default_names(&self) -> bool {
        self.names.iter().enumerate().all(|(i, n)| *n == format!("LABEL_{i}"))
    }

    fn id(&self, s: &Scalar) -> std::result::Result<usize, String> {
        let by_name = |name: &str| self.names.iter().position(|n| n == name);
        let found = match s {
            Scalar::Name(n) | Scalar::Float(_, n) => by_name(n),
            Scalar::Int(i) if self.ints_by_name() => by_name(&i.to_string()),
            Scalar::Int(i) => usize::try_from(*i).ok().filter(|&i| i < self.names.len()),
            Scalar::Class(i, n) => by_name(n).or_else(|| (self.default_names() && *i < self.names.len()).then_some(*i)),
        };
        found.ok_or_else(|| {
            let ids = if matches!(s, Scalar::Int(_)) && !self.ints_by_name() { format!(" (ids 0..{})", self.names.len()) } else { String::new() };
            format!("label {} is not one of the labels {:?}{ids} ({})", s.describe(), self.names, self.source)
        })
    }

    /// The target of one raw label, or why it has none.
    pub fn label(&self, raw: &RawLabel) -> std::result::Result<ClsLabel, String> {
        match (self.problem_type, raw) {
            (ProblemType::Regression, RawLabel::One(Scalar::Int(i))) => Ok(ClsLabel::Value(*i as f64)),
            (ProblemType::Regression, RawLabel::One(Scalar::Float(x, _))) => Ok(ClsLabel::Value(*x)),
            (ProblemType::Regression, RawLabel::One(s)) => Err(format!("label {}: regression needs a number", s.describe())),
            (ProblemType::Regression, RawLabel::List(_)) => Err("label is a list: regression needs one number".into()),
            (ProblemType::SingleLabel, RawLabel::One(s)) => self.id(s).map(ClsLabel::Class),
            (ProblemType::SingleLabel, RawLabel::List(_)) => {
                Err("label is a list: lists of labels need problem_type = \"multi_label_classification\"".into())
            }
            (ProblemType::MultiLabel, raw) => {
                let mut hot = vec![false; self.names.len()];
                let one;
                let items = match raw {
                    RawLabel::List(v) => v.as_slice(),
                    RawLabel::One(s) => {
                        one = [s.clone()];
                        &one[..]
                    }
                };
                for s in items {
                    hot[self.id(s)?] = true;
                }
                Ok(ClsLabel::Multi(hot))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(v: Value) -> RawLabel {
        parse(&v, false, None).unwrap()
    }

    fn space(task: &str, labels: &[Value]) -> Result<LabelSpace> {
        let task: ClassificationTaskConfig = toml::from_str(task).unwrap();
        let raws: Vec<RawLabel> = labels.iter().cloned().map(raw).collect();
        LabelSpace::resolve(&task, &raws.iter().collect::<Vec<_>>(), None)
    }

    #[test]
    fn default_labels_are_sorted_names_or_integers_as_themselves() {
        let s = space("", &[json!("pos"), json!("neg"), json!("neutral"), json!("neg")]).unwrap();
        assert_eq!((s.names.as_slice(), s.problem_type), (&["neg", "neutral", "pos"].map(String::from)[..], ProblemType::SingleLabel));
        assert_eq!(s.label(&raw(json!("pos"))), Ok(ClsLabel::Class(2)));
        // Integers 0..=max, named by themselves; 11 sorts after 2 (not as the strings would).
        let s = space("", &[json!(2), json!(0), json!(11)]).unwrap();
        assert_eq!(s.names, (0..=11).map(|i| i.to_string()).collect::<Vec<_>>());
        assert_eq!(s.label(&raw(json!(11))), Ok(ClsLabel::Class(11)));
        // task.labels fixes the order; integers are ids into names that are not integers...
        let s = space("labels = [\"neg\", \"pos\"]", &[json!(0)]).unwrap();
        assert_eq!(s.label(&raw(json!(1))), Ok(ClsLabel::Class(1)));
        assert_eq!(s.label(&raw(json!(2))).unwrap_err(), "label 2 is not one of the labels [\"neg\", \"pos\"] (ids 0..2) (task.labels)");
        // ... and names among integer names (star ratings).
        let s = space("labels = [\"1\", \"2\", \"3\", \"4\", \"5\"]", &[json!(5)]).unwrap();
        assert_eq!(s.label(&raw(json!(5))), Ok(ClsLabel::Class(4)));
        assert_eq!(s.label(&raw(json!("oops"))).unwrap_err(), "label \"oops\" is not one of the labels [\"1\", \"2\", \"3\", \"4\", \"5\"] (task.labels)");
        assert!(space("", &[json!("only")]).unwrap_err().to_string().contains("at least 2 labels"));
        assert!(space("labels = [\"a\", \"a\"]", &[]).unwrap_err().to_string().contains("listed twice"));
    }

    #[test]
    fn multi_label_and_regression_are_inferred_as_transformers_does() {
        let s = space("", &[json!(["b", "a"]), json!([]), json!(["c"])]).unwrap();
        assert_eq!((s.names.len(), s.problem_type), (3, ProblemType::MultiLabel));
        assert_eq!(s.label(&raw(json!(["c", "a"]))), Ok(ClsLabel::Multi(vec![true, false, true])));
        assert_eq!(s.label(&raw(json!([]))), Ok(ClsLabel::Multi(vec![false; 3])));
        let s = space("", &[json!(0.5), json!(2)]).unwrap();
        assert_eq!((s.names.as_slice(), s.problem_type), (&["LABEL_0".to_string()][..], ProblemType::Regression));
        assert_eq!(s.label(&raw(json!(2))), Ok(ClsLabel::Value(2.0)));
        // One listed label is regression, as num_labels = 1 is in transformers.
        let s = space("labels = [\"score\"]", &[json!(3)]).unwrap();
        assert_eq!(s.problem_type, ProblemType::Regression);
        assert_eq!(s.label(&raw(json!("x"))).unwrap_err(), "label \"x\": regression needs a number");
        let s = space("problem_type = \"single_label_classification\"", &[json!(["a"]), json!("b")]).unwrap();
        assert!(s.label(&raw(json!(["a"]))).unwrap_err().contains("multi_label_classification"));
    }

    #[test]
    fn csv_cells_and_class_labels_are_typed() {
        assert_eq!(parse(&json!("3"), true, None), Ok(RawLabel::One(Scalar::Int(3))));
        assert_eq!(parse(&json!("0.25"), true, None), Ok(RawLabel::One(Scalar::Float(0.25, "0.25".into()))));
        assert_eq!(parse(&json!("[\"a\", \"b\"]"), true, None), Ok(RawLabel::List(vec![Scalar::Name("a".into()), Scalar::Name("b".into())])));
        assert_eq!(parse(&json!("3"), false, None), Ok(RawLabel::One(Scalar::Name("3".into()))));
        let names = ["neg".to_string(), "pos".to_string()];
        assert_eq!(parse(&json!(1), false, Some(&names)), Ok(RawLabel::One(Scalar::Class(1, "pos".into()))));
        assert!(parse(&json!(2), false, Some(&names)).unwrap_err().contains("ClassLabel"));
        assert!(parse(&json!({"a": 1}), false, None).unwrap_err().contains("found an object"));
        // ClassLabel ids reach a model with default names by id, others by name.
        let model = LabelSpace::fixed(vec!["LABEL_0".into(), "LABEL_1".into()], ProblemType::SingleLabel, "the model's id2label").unwrap();
        assert_eq!(model.label(&RawLabel::One(Scalar::Class(1, "pos".into()))), Ok(ClsLabel::Class(1)));
        let model = LabelSpace::fixed(vec!["pos".into(), "neg".into()], ProblemType::SingleLabel, "the model's id2label").unwrap();
        assert_eq!(model.label(&RawLabel::One(Scalar::Class(1, "pos".into()))), Ok(ClsLabel::Class(0)));
    }
}

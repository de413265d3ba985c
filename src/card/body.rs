//! The Markdown body of a model card: what the model is, the training curve, the results, the
//! hyperparameters, the data, how to load it (transformers, PEFT, rankforge) and the recipe.

use std::fmt::Write;

use super::{eval_metrics, metric_label, sources, CardInput, CardTask, Variant, CURVES};
use crate::config::Schedule;

/// The path a usage example loads (the card's own directory).
const HERE: &str = "path/to/final";

pub fn body(c: &CardInput<'_>, variant: Variant) -> String {
    let mut s = String::new();
    intro(c, variant, &mut s);
    let _ = writeln!(s, "![training curve]({CURVES})\n");
    results(c, &mut s);
    hyperparameters(c, &mut s);
    data(c, &mut s);
    usage(c, variant, &mut s);
    let _ = write!(s, "## Recipe\n\nThe resolved recipe of the run (`recipe.toml`):\n\n```toml\n{}```\n\n", c.recipe.to_toml());
    let _ = writeln!(s, "## Framework versions\n\n- rankforge {}", env!("CARGO_PKG_VERSION"));
    s
}

/// The base model as the text names it: its Hub id, else the local directory.
fn base_name(c: &CardInput<'_>) -> Option<String> {
    c.base_id().or_else(|| c.info.base.as_ref().map(|p| p.display().to_string()))
}

fn intro(c: &CardInput<'_>, variant: Variant, s: &mut String) {
    let task = c.task();
    let _ = writeln!(s, "# {}\n", c.name());
    let what = match task {
        CardTask::Pretraining => "A causal language model (GPT-2 architecture) pretrained from scratch",
        CardTask::Sft => "A causal language model fine-tuned (supervised fine-tuning)",
        CardTask::Dpo => "A causal language model trained by direct preference optimisation (DPO)",
        CardTask::Classification => "A sequence classifier fine-tuned",
        CardTask::MaskedLm => "A masked language model trained",
    };
    let from = match (&c.info.base, c.base_id()) {
        (None, _) => String::new(),
        (Some(_), Some(id)) => format!(" from [{id}](https://huggingface.co/{id})"),
        (Some(dir), None) => format!(" from the local model directory `{}`", dir.display()),
    };
    let _ = write!(s, "{what}{from} with [rankforge](https://github.com/rankforge/rankforge): `{}`", c.info.architecture);
    if let Some(p) = c.info.params {
        let _ = write!(s, ", {p} parameters");
    }
    let _ = writeln!(s, ", {} optimizer steps on {} tokens.", c.state.step, c.state.tokens);
    let note = match variant {
        Variant::Model => String::new(),
        Variant::Adapter => "\nThis directory is a PEFT LoRA adapter for the base model; `merged/` holds the base with the adapter merged in.".to_string(),
        Variant::Merged => "\nThis directory is the base model with the trained LoRA adapter merged in: a plain transformers model.".to_string(),
    };
    let _ = writeln!(s, "{note}\n");
}

fn results(c: &CardInput<'_>, s: &mut String) {
    let _ = writeln!(s, "## Results\n");
    let data = sources::eval_data(c.recipe);
    match c.metrics.evals.last() {
        None => {
            let _ = writeln!(s, "The run did not evaluate (no validation data).\n");
        }
        Some(last) => {
            let step = last.get("step").and_then(|v| v.as_u64()).unwrap_or(c.state.step);
            let _ = writeln!(s, "The last evaluation, after step {step}, on {}:\n\n| metric | value |\n|---|---|", data.name);
            for (k, v) in eval_metrics(last) {
                let _ = writeln!(s, "| {} (`{k}`) | {} |", metric_label(&k).1, num(v));
            }
            s.push('\n');
        }
    }
    if let Some((step, loss)) = c.metrics.last_train {
        let _ = writeln!(s, "Training loss at the last step ({step}): {}.\n", num(loss));
    }
    if c.metrics.evals.len() > 1 {
        let headline = ["val_ppl", "accuracy", "top1_accuracy", "val_rewards/accuracies"];
        let extra = c.metrics.evals.last().and_then(|l| headline.iter().find(|k| l.contains_key(**k)).copied());
        let _ = write!(s, "### Training history\n\n| step | training loss | validation loss |");
        if let Some(k) = extra {
            let _ = write!(s, " {} |", metric_label(k).1.to_lowercase());
        }
        let _ = writeln!(s, "\n|---|---|---|{}", if extra.is_some() { "---|" } else { "" });
        for row in &c.metrics.evals {
            let step = row.get("step").and_then(|v| v.as_u64()).unwrap_or(0);
            let cell = |x: Option<f64>| x.map_or("—".to_string(), num);
            let _ = write!(s, "| {step} | {} | {} |", cell(c.metrics.train_loss_at(step)), cell(row.get("val_loss").and_then(|v| v.as_f64())));
            if let Some(k) = extra {
                let _ = write!(s, " {} |", cell(row.get(k).and_then(|v| v.as_f64())));
            }
            s.push('\n');
        }
        s.push('\n');
    }
}

/// A hyperparameter: small values in exponent notation (`5e-5`, `1e-8`), others as written.
fn hp(x: f64) -> String {
    if x != 0.0 && x.abs() < 1e-3 {
        format!("{x:e}")
    } else {
        x.to_string()
    }
}

/// A number as a table cell: 4 significant decimals, integers as integers.
fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else if x.abs() >= 1e-3 {
        format!("{x:.4}")
    } else {
        format!("{x:.4e}")
    }
}

fn hyperparameters(c: &CardInput<'_>, s: &mut String) {
    let (r, t) = (c.recipe, &c.recipe.train);
    let world = c.state.world_size.max(1);
    let per_rank = t.global_batch_size.div_ceil(world);
    let accumulation = per_rank.div_ceil(t.micro_batch_size.max(1));
    let schedule = match t.schedule {
        Schedule::Cosine => "cosine",
        Schedule::Linear => "linear",
        Schedule::Constant => "constant",
    };
    let precision = if c.info.bf16 { "bf16 autocast, fp32 master weights" } else { "fp32" };
    let mut rows: Vec<(&str, String)> = vec![
        ("learning_rate", hp(t.lr)),
        ("lr_scheduler", format!("{schedule} to min_lr {} over {} steps", hp(t.min_lr), t.lr_decay_steps.map_or("the run's".into(), |n| n.to_string()))),
        ("warmup_steps", t.warmup_steps.to_string()),
        ("steps", c.state.step.to_string()),
    ];
    if let Some(e) = t.epochs {
        rows.push(("epochs", e.to_string()));
    }
    rows.extend([
        ("global_batch_size", t.global_batch_size.to_string()),
        ("micro_batch_size", t.micro_batch_size.to_string()),
        ("gradient_accumulation_steps", format!("{accumulation} (per rank)")),
        ("world_size", world.to_string()),
        ("optimizer", format!("AdamW (betas = ({}, {}), eps = {}, weight_decay = {})", t.beta1, t.beta2, hp(t.eps), hp(t.weight_decay))),
        ("grad_clip", if t.grad_clip > 0.0 { t.grad_clip.to_string() } else { "off".into() }),
        ("precision", precision.to_string()),
        ("seed", t.seed.to_string()),
    ]);
    if let Some(n) = r.data.max_length() {
        rows.push(("max_length", n.to_string()));
    }
    if let Some(g) = r.model.gpt() {
        rows.push(("architecture", format!("n_layer {}, n_head {}, n_embd {}, block_size {}, dropout {}", g.n_layer, g.n_head, g.n_embd, g.block_size, g.dropout)));
    }
    if let Some(l) = &r.lora {
        let targets = match &l.target_modules {
            crate::lora::TargetModules::Names(n) => n.join(", "),
            crate::lora::TargetModules::Preset(p) => p.clone(),
        };
        rows.extend([("lora_r", l.r.to_string()), ("lora_alpha", l.alpha.to_string()), ("lora_dropout", l.dropout.to_string()), ("lora_target_modules", targets)]);
        if l.use_rslora {
            rows.push(("use_rslora", "true".into()));
        }
    }
    if let Some(d) = r.task.dpo() {
        rows.extend([("dpo_beta", d.beta.to_string()), ("dpo_loss_type", d.loss_type.as_str().to_string())]);
        if d.label_smoothing > 0.0 {
            rows.push(("label_smoothing", d.label_smoothing.to_string()));
        }
        let reference = match (&d.ref_model, r.lora.is_some()) {
            (Some(p), _) => format!("`{}`", p.display()),
            (None, true) => "the base model (adapters off)".into(),
            (None, false) => "a frozen copy of the initial model".into(),
        };
        rows.push(("reference_model", format!("{reference}{}", if d.precompute_ref { ", log-probs precomputed" } else { "" })));
    }
    if let Some(m) = r.task.masked_lm() {
        rows.push(("mlm_probability", format!("{} ({} [MASK], {} random, rest unchanged)", m.mlm_probability, m.mask_replace_prob, m.random_replace_prob)));
    }
    if let Some(p) = &c.info.problem_type {
        rows.push(("problem_type", p.clone()));
    }
    if !c.info.labels.is_empty() {
        rows.push(("labels", c.info.labels.iter().enumerate().map(|(i, l)| format!("{i}: {l}")).collect::<Vec<_>>().join(", ")));
    }
    let _ = writeln!(s, "## Training hyperparameters\n\n| hyperparameter | value |\n|---|---|");
    for (k, v) in rows {
        let _ = writeln!(s, "| {k} | {} |", v.replace('|', "\\|"));
    }
    s.push('\n');
}

fn data(c: &CardInput<'_>, s: &mut String) {
    let src = c.recipe.data.sources();
    let list = |paths: &[std::path::PathBuf]| paths.iter().map(|p| format!("`{}`", p.display())).collect::<Vec<_>>().join(", ");
    let _ = writeln!(s, "## Data\n\n- training: {} ({})", list(src.train), src.train.first().map_or("text", |p| sources::builder(p)));
    match src.val {
        Some(v) => {
            let _ = writeln!(s, "- validation: {}", list(v));
        }
        None if src.effective_val_fraction() > 0.0 => {
            let _ = writeln!(s, "- validation: the last {}% of the training data, held out", src.effective_val_fraction() * 100.0);
        }
        None => {
            let _ = writeln!(s, "- validation: none");
        }
    }
    let ids = c.dataset_ids();
    if !ids.is_empty() {
        let _ = writeln!(s, "- on the Hub: {}", ids.iter().map(|i| format!("[{i}](https://huggingface.co/datasets/{i})")).collect::<Vec<_>>().join(", "));
    }
    if let Some(t) = src.tokenizer {
        let _ = writeln!(s, "- tokenizer: `{}`", t.display());
    }
    s.push('\n');
}

fn usage(c: &CardInput<'_>, variant: Variant, s: &mut String) {
    let task = c.task();
    let base = base_name(c).unwrap_or_default();
    let (auto, pipeline) = match task {
        CardTask::Classification => ("AutoModelForSequenceClassification", "text-classification"),
        CardTask::MaskedLm => ("AutoModelForMaskedLM", "fill-mask"),
        _ => ("AutoModelForCausalLM", "text-generation"),
    };
    let _ = writeln!(s, "## Usage\n\nWith transformers{}:\n\n```python", if variant == Variant::Adapter { " and PEFT" } else { "" });
    if variant == Variant::Adapter {
        let num_labels = if task == CardTask::Classification { format!(", num_labels={}", c.info.labels.len()) } else { String::new() };
        let _ = writeln!(
            s,
            "from peft import PeftModel\nfrom transformers import {auto}, AutoTokenizer\n\n\
             base = {auto}.from_pretrained(\"{base}\"{num_labels})\n\
             model = PeftModel.from_pretrained(base, \"{HERE}\")\n\
             tokenizer = AutoTokenizer.from_pretrained(\"{HERE}\")\n\
             # or the merged model: {auto}.from_pretrained(\"{HERE}/merged\")"
        );
    } else {
        let _ = writeln!(s, "from transformers import pipeline\n\npipe = pipeline(\"{pipeline}\", model=\"{HERE}\")");
        let example = match task {
            CardTask::Classification => "pipe(\"a text to classify\")".to_string(),
            CardTask::MaskedLm => format!("pipe(\"The capital of France is {}.\")", c.info.mask_token.as_deref().unwrap_or("[MASK]")),
            _ => "pipe(\"And it came to pass\", max_new_tokens=40)".to_string(),
        };
        let _ = writeln!(s, "print({example})");
    }
    let _ = writeln!(s, "```\n\nWith rankforge:\n\n```sh");
    let (model, adapter) = match variant {
        Variant::Adapter => (base.as_str(), format!(" --adapter {HERE}")),
        _ => (HERE, String::new()),
    };
    let cmd = match task {
        CardTask::Classification => format!("rankforge predict --model {HERE} --text \"a text to classify\" --top-k all"),
        CardTask::MaskedLm => format!("rankforge fill-mask --model {model}{adapter} --text \"The capital of France is {}.\"", c.info.mask_token.as_deref().unwrap_or("[MASK]")),
        _ => format!("rankforge generate --model {model}{adapter} --prompt \"And it came to pass\" --max-new-tokens 40"),
    };
    let _ = writeln!(s, "{cmd}\n```\n");
}

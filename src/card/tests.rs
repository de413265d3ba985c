use super::*;
use serde_json::json;

#[test]
fn repo_ids_are_validated_as_the_hub_does() {
    for ok in ["gpt2", "openai-community/gpt2", "meta-llama/Llama-3.1-8B", "a_b.c/d-e"] {
        assert!(sources::is_repo_id(ok), "{ok}");
    }
    for bad in ["", "/abs/path", "./rel", "a/b/c", "a--b/c", "a/b..c", "a/b.git", "-a/b", "a b/c", "~/models/x"] {
        assert!(!sources::is_repo_id(bad), "{bad}");
    }
}

#[test]
fn base_model_ids_come_from_the_hub_cache_or_a_hub_name_or_path_never_a_local_path() {
    let tmp = tempfile::tempdir().unwrap();
    let cached = tmp.path().join("hub/models--meta-llama--Llama-3.1-8B/snapshots/abc123");
    std::fs::create_dir_all(&cached).unwrap();
    assert_eq!(base_model_id(&cached).as_deref(), Some("meta-llama/Llama-3.1-8B"));
    let local = tmp.path().join("my-llama");
    std::fs::create_dir_all(&local).unwrap();
    assert_eq!(base_model_id(&local), None, "no config.json");
    std::fs::write(local.join("config.json"), json!({"_name_or_path": "Qwen/Qwen2-0.5B"}).to_string()).unwrap();
    assert_eq!(base_model_id(&local).as_deref(), Some("Qwen/Qwen2-0.5B"));
    for path_like in ["/home/me/ckpt", "", "~/x", tmp.path().to_str().unwrap()] {
        std::fs::write(local.join("config.json"), json!({"_name_or_path": path_like}).to_string()).unwrap();
        assert_eq!(base_model_id(&local), None, "{path_like:?}");
    }
}

#[test]
fn hub_dataset_ids_come_from_the_hub_cache_or_save_to_disk_download_records() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("hub/datasets--stanfordnlp--imdb/snapshots/e628/plain_text/train-00000-of-00001.parquet");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, b"").unwrap();
    assert_eq!(hub_dataset_id(&file).as_deref(), Some("stanfordnlp/imdb"));
    // A DatasetDict saved to disk: dataset_dict.json + one folder per split.
    let saved = tmp.path().join("imdb_saved");
    std::fs::create_dir_all(saved.join("train")).unwrap();
    std::fs::write(saved.join("dataset_dict.json"), r#"{"splits": ["train"]}"#).unwrap();
    assert_eq!(hub_dataset_id(&saved), None, "no download record");
    let info = json!({"builder_name": "parquet", "download_checksums": {"hf://datasets/stanfordnlp/imdb@e6281661/plain_text/train-00000-of-00001.parquet": {"num_bytes": 1}}});
    std::fs::write(saved.join("train/dataset_info.json"), info.to_string()).unwrap();
    assert_eq!(hub_dataset_id(&saved).as_deref(), Some("stanfordnlp/imdb"));
    assert_eq!(sources::builder(&saved), "arrow");
    let local = tmp.path().join("rows.jsonl");
    std::fs::write(&local, "{}\n").unwrap();
    assert_eq!((hub_dataset_id(&local), sources::builder(&local)), (None, "json"));
}

#[test]
fn eval_metrics_are_the_finite_numbers_of_the_row_but_the_counts() {
    let row = json!({"step": 6, "val_loss": 0.5, "val_ppl": 1.65, "samples": [{"prompt": "x"}], "val_examples": 16, "masked_tokens": 40,
                     "val_rewards/accuracies": 0.75, "f1_macro": null});
    let m = eval_metrics(row.as_object().unwrap());
    assert_eq!(m, vec![("val_loss".to_string(), 0.5), ("val_ppl".to_string(), 1.65), ("val_rewards/accuracies".to_string(), 0.75)]);
    assert_eq!(metric_label("f1_macro"), ("f1".to_string(), "F1 (macro)".to_string()));
    assert_eq!(metric_label("val_rewards/margins"), ("rewards/margins".to_string(), "Validation rewards/margins".to_string()));
}

//! Which position of `forward()` each configured tensor binds to.
//!
//! TorchScript tensors have no names: `forward` takes positional arguments and
//! returns a tensor, or a tuple or list of them. Like Triton's PyTorch backend,
//! names of the form `<name>__<index>` (`INPUT__0`, `OUTPUT__1`) give the
//! position; any other names bind in the order the config lists them.

/// The `<index>` of a `<name>__<index>` name.
fn convention_index(name: &str) -> Option<usize> {
    let (_, index) = name.rsplit_once("__")?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    index.parse().ok()
}

/// The indices of the names if every name follows the convention.
fn all_indices(names: &[&str]) -> Option<Vec<usize>> {
    names.iter().map(|n| convention_index(n)).collect()
}

/// Argument position of each input, in config order. `forward` needs every
/// argument, so indexed names must use each of `0..n` exactly once.
pub(crate) fn input_positions(names: &[&str]) -> Result<Vec<usize>, String> {
    let Some(indices) = all_indices(names) else {
        return Ok((0..names.len()).collect());
    };
    let mut seen = vec![false; names.len()];
    for (name, &index) in names.iter().zip(&indices) {
        match seen.get_mut(index) {
            Some(slot) if !*slot => *slot = true,
            _ => {
                return Err(format!(
                    "input '{name}': with <name>__<index> names, the {} inputs must use each index 0 to {} once",
                    names.len(),
                    names.len().saturating_sub(1)
                ));
            }
        }
    }
    Ok(indices)
}

/// Position in the model's result of each output, in config order. A config
/// may list a subset of what the model returns, so indices may skip.
pub(crate) fn output_positions(names: &[&str]) -> Result<Vec<usize>, String> {
    let Some(indices) = all_indices(names) else {
        return Ok((0..names.len()).collect());
    };
    for (i, &index) in indices.iter().enumerate() {
        if let Some(j) = indices[..i].iter().position(|&other| other == index) {
            return Err(format!("outputs '{}' and '{}' both name result position {index}", names[j], names[i]));
        }
    }
    Ok(indices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triton_names_bind_by_their_index_in_any_config_order() {
        assert_eq!(input_positions(&["INPUT__1", "INPUT__0"]).unwrap(), vec![1, 0]);
        assert_eq!(input_positions(&["a__0", "b__1", "c__2"]).unwrap(), vec![0, 1, 2]);
        assert_eq!(output_positions(&["OUTPUT__2", "OUTPUT__0"]).unwrap(), vec![2, 0]);
    }

    #[test]
    fn other_names_bind_in_config_order() {
        assert_eq!(input_positions(&["image", "mask"]).unwrap(), vec![0, 1]);
        // One name outside the convention: none of them binds by index.
        assert_eq!(input_positions(&["INPUT__1", "mask"]).unwrap(), vec![0, 1]);
        assert_eq!(output_positions(&["scores", "OUT__"]).unwrap(), vec![0, 1]);
        assert_eq!(output_positions(&["x__1a"]).unwrap(), vec![0]);
    }

    #[test]
    fn indexed_inputs_must_cover_every_argument_once() {
        let gap = input_positions(&["INPUT__0", "INPUT__2"]).unwrap_err();
        assert!(gap.contains("'INPUT__2'") && gap.contains("0 to 1"), "{gap}");
        assert!(input_positions(&["INPUT__0", "X__0"]).is_err());
        assert!(input_positions(&["INPUT__99999999999999999999999"]).is_ok_and(|p| p == vec![0]));
    }

    #[test]
    fn indexed_outputs_may_skip_but_not_repeat() {
        assert_eq!(output_positions(&["OUTPUT__3"]).unwrap(), vec![3]);
        let twice = output_positions(&["A__1", "B__1"]).unwrap_err();
        assert!(twice.contains("'A__1' and 'B__1'"), "{twice}");
    }
}

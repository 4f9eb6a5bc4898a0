"""What operates on networks' weights and knows no method: weights <-> tokens (`tokens`), weight matching
(`permutation`), averaging and BatchNorm re-estimation (`averaging`)."""

"""Full-size maps after prediction: voting, hole filling and clean-ups, the segment vote, scoring and
polygons. Everything streams in strips."""

"""Evaluation of a base with (composed) PEFT modules: decode, score, bootstrap, write tables and plots.

The one path behind launch/evaluate.py (`peft_jax.evaluate`) and the pipeline's selection and
evaluation stages (`peft_jax.pipeline.experiment`):

  decoding   Decoder: the model's prompt features, fixed-shape batches, `decode.generate`, detokenisation
  scoring    Scoring: ROUGE with bootstrap intervals, wrong-language rate, paired bootstrap
  run        read_examples, run_system: decode + write predictions + score one system
  tables     the CSV, Markdown and predictions writers and the table layouts
  plots      bar_plot (per language, with intervals), sweep_plot (score against λ)
"""

from peft_jax.evaluation.decoding import Decoder, generate_options
from peft_jax.evaluation.plots import bar_plot, sweep_plot
from peft_jax.evaluation.run import read_examples, run_system
from peft_jax.evaluation.scoring import Scoring, adjust_table
from peft_jax.evaluation.tables import (RECIPE_CSV_COLUMNS, RECIPE_TABLE, SYSTEM_CSV_COLUMNS, SYSTEM_TABLE,
                                        csv_text, markdown_table, sweep_section, sweep_table, write_csv,
                                        write_markdown, write_predictions)

__all__ = ["Decoder", "RECIPE_CSV_COLUMNS", "RECIPE_TABLE", "SYSTEM_CSV_COLUMNS", "SYSTEM_TABLE", "Scoring",
           "adjust_table", "bar_plot", "csv_text", "generate_options", "markdown_table", "read_examples",
           "run_system", "sweep_plot", "sweep_section", "sweep_table", "write_csv", "write_markdown",
           "write_predictions"]

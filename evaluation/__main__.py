"""python -m evaluation COMMAND — benchmarks by letter logits, bits per character, forgetting reports, contamination, membership inference, LLM judge, long context, reading comprehension, math word problems, code by running it, scorecards."""
from zhllama.cli import main_for

COMMANDS = {
    "choice": "evaluation.choice_cli",
    "report": "evaluation.report_cli",
    "base": "evaluation.base_cli",
    "contamination": "evaluation.contamination_cli",
    "judge": "evaluation.judge_cli",
    "long-context": "evaluation.long_context_cli",
    "reading": "evaluation.reading_cli",
    "math": "evaluation.math_cli",
    "code": "evaluation.code_cli",
    "membership": "evaluation.membership_cli",
    "scorecard": "evaluation.scorecard_cli",
}

if __name__ == "__main__":
    main_for("evaluation", COMMANDS, __doc__.splitlines()[0])

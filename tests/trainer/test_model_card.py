"""The card a trained Copilot adapter is shared with."""

from huggingface_hub import ModelCard
from peft import get_peft_model

from tcopilot_peft import CopilotConfig
from tcopilot_peft.trainer.model_card import copilot_model_card
from tests.conftest import arithmetic_dataset
from tests.trainer.test_sft_trainer import copilot_args, pilot, train


def test_the_saved_adapter_card_says_what_it_is_and_how_to_load_it(tmp_path):
    model = get_peft_model(pilot(), CopilotConfig(copilot_loss="rmse", num_layers=2))
    model.get_base_model().config._name_or_path = "org/tiny-pilot"  # as a Hub Pilot would carry it
    args = copilot_args(tmp_path, max_steps=2, logging_steps=1, eval_strategy="steps", eval_steps=2)
    trainer = train(model, args, eval_dataset=arithmetic_dataset(8, seed=1))
    trainer.save_model(str(tmp_path / "adapter"))
    card = ModelCard.load(tmp_path / "adapter" / "README.md")
    assert {"copilot", "transformer-copilot", "peft"} <= set(card.data.tags)
    assert card.data.base_model == "org/tiny-pilot" and card.data.library_name == "peft"
    text = card.text
    assert "import tcopilot_peft" in text and "KeyError: 'COPILOT'" in text and "[None]" not in text
    assert 'from_pretrained("org/tiny-pilot")' in text and "| `copilot_loss` | `rmse` |" in text
    assert "| `fusion_mode` | `prob` |" in text  # the paper's objective's own fusion
    last_train = [e for e in trainer.state.log_history if "copilot_loss" in e][-1]
    last_eval = [e for e in trainer.state.log_history if "eval_loss" in e][-1]
    assert f"| training | {last_train['step']} | {last_train['loss']:.4f} | {last_train['copilot_loss']:.4f} |" in text
    assert (
        f"| held-out | {last_eval['step']} | {last_eval['eval_loss']:.4f} | {last_eval['eval_copilot_loss']:.4f} |"
        in text
    )
    trainer.create_model_card(model_name="my-copilot")  # what TRL calls with every checkpoint
    assert ModelCard.load(tmp_path / "out" / "README.md").text.lstrip().startswith("# my-copilot")


def test_a_card_without_logged_numbers_has_no_results_table():
    card = copilot_model_card(get_peft_model(pilot(), CopilotConfig()))
    assert "## Training results" not in card.text and "## How to load" in card.content
    assert "| `copilot_loss` | `fused_ce` |" in card.text

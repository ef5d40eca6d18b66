//! Chat templates: turns chat messages into the prompt text the model was trained on, by
//! rendering the Jinja template stored in the GGUF metadata (`tokenizer.chat_template`).

use minijinja::{Environment, context};
use prompt2lora_core::ChatMessage;

use crate::LocalError;

/// ChatML, used when a model file carries no template of its own.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + \
    message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ \
    '<|im_start|>assistant\n' }}{% endif %}";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source`, or ChatML when `None`.
    pub fn new(
        source: Option<&str>,
        bos_token: Option<&str>,
        eos_token: &str,
    ) -> Result<Self, LocalError> {
        let mut env = Environment::new();
        // Templates written for Python's Jinja call string methods (`.strip()`, `.split()`).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_template_owned("chat", source.unwrap_or(CHATML).to_string())
            .map_err(|e| LocalError::Template(format!("cannot compile the chat template: {e}")))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The prompt for `messages`; with `add_generation_prompt` it ends where the assistant's
    /// answer starts.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, LocalError> {
        let template = self.env.get_template("chat").map_err(template_error)?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(template_error)
    }

    /// The text the template writes right after an assistant's answer (e.g. `<|im_end|>\n`),
    /// found by rendering a conversation with a known answer.
    pub fn answer_suffix(&self) -> Result<String, LocalError> {
        const PROBE: &str = "Probe answer 7431.";
        let mut messages = vec![ChatMessage::user("Say the probe answer.")];
        let prompt = self.render(&messages, true)?;
        messages.push(ChatMessage::assistant(PROBE));
        let full = self.render(&messages, false)?;
        full.strip_prefix(&prompt)
            .and_then(|rest| rest.strip_prefix(PROBE))
            .map(str::to_string)
            .ok_or_else(|| {
                LocalError::Template(
                    "the chat template does not render an answer right after the prompt".into(),
                )
            })
    }
}

fn template_error(e: minijinja::Error) -> LocalError {
    LocalError::Template(format!("cannot render the chat template: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-Instruct's template, as stored in its GGUF file.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_fallback_renders_turns_and_generation_prompt() {
        let template = ChatTemplate::new(None, None, "<|im_end|>").unwrap();
        let messages = [ChatMessage::system("Be brief."), ChatMessage::user("Hi")];
        assert_eq!(
            template.render(&messages, true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        assert_eq!(template.answer_suffix().unwrap(), "<|im_end|>\n");
    }

    #[test]
    fn smollm2_template_adds_its_default_system_prompt() {
        let template = ChatTemplate::new(Some(SMOLLM2), None, "<|im_end|>").unwrap();
        let rendered = template
            .render(&[ChatMessage::user("What is 2+2?")], true)
            .unwrap();
        assert_eq!(
            rendered,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
             Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
        let own_system = [ChatMessage::system("S"), ChatMessage::user("U")];
        assert!(
            template
                .render(&own_system, false)
                .unwrap()
                .starts_with("<|im_start|>system\nS<")
        );
    }

    #[test]
    fn template_errors_and_python_methods() {
        let raising = "{{ raise_exception('only user turns') }}";
        let template = ChatTemplate::new(Some(raising), None, "</s>").unwrap();
        let err = template
            .render(&[ChatMessage::user("x")], true)
            .unwrap_err();
        assert!(err.to_string().contains("only user turns"), "{err}");

        let pythonic =
            "{{ bos_token }}{% for m in messages %}[{{ m.content.strip() }}]{% endfor %}";
        let template = ChatTemplate::new(Some(pythonic), Some("<s>"), "</s>").unwrap();
        assert_eq!(
            template
                .render(&[ChatMessage::user("  hi  ")], true)
                .unwrap(),
            "<s>[hi]"
        );

        assert!(ChatTemplate::new(Some("{% for %}"), None, "</s>").is_err());
    }
}

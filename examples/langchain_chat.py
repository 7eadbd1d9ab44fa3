"""glmbot in a LangChain chain: prompt template -> routed ChatGLM2 prefix adapters -> string.

    python examples/langchain_chat.py

Runs on the builtin tiny base with the adapters registered in ./adapters (train one first:
`glmbot train --domain support --promote`); without any, every question goes to the plain base.
"""

from __future__ import annotations

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from glmbot.integrations.langchain import ChatGlmbot


def main() -> None:
    # The engine glmbot.toml describes (base model, registry, router, plugins), built on first use.
    chat = ChatGlmbot(do_sample=False, max_new_tokens=64)
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | chat | StrOutputParser()
    for question in ("你好", "退货多久到账？", "快递是哪家的？"):
        print(f"问：{question}\n答：{chain.invoke({'question': question})}")
    message = chat.invoke("退货多久到账？")
    meta = message.response_metadata
    print(f"(answered by {meta['adapter'] or 'the plain base'}, route: {meta['route_reason']}, "
          f"{message.usage_metadata['output_tokens']} tokens)")
    print("streamed:", "".join(chunk.content for chunk in chat.stream("谢谢")))


if __name__ == "__main__":
    main()

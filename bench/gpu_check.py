"""The GPU checks: run on a machine with an NVIDIA GPU and ``pip install -e '.[gpu]'``.

    python bench/gpu_check.py --tokenizer-from DIR [--vllm vllm] [--port 8011]

One line per check, ``ok`` or ``FAILED`` with the reason; exit 1 if any failed:

1. onnxruntime runs a model on ``CUDAExecutionProvider`` (not a silent CPU fallback);
2. faiss sees the GPU and searches an index moved onto it;
3. vLLM's GPU build serves the tiny MedDr (``generalist.make_tiny_meddr``) with
   the MedDr recipe's own command (``generalist.meddr_serve_command``, one GPU):
   an image adds its 256 tokens to the prompt, answers stay in the label set;
4. a LoRA of its language model, tuned with the sites' trainer, loads at run time
   and answers under its own name.

``--tokenizer-from`` is a folder with SmolLM2's ``tokenizer.json`` (on a machine
with the embedded generalist: ``gsco generalist prepare`` prints it). What only
MedDr's weights can show (that it diagnoses well) stays for a run with them.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _onnxruntime_on_cuda(work: Path) -> str:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "check",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 2], [0.5] * 8)],
    )
    path = work / "check.onnx"
    # IR 10 (opset 17): what every onnxruntime the project pins reads.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, path)
    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    used = session.get_providers()
    if used[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"onnxruntime runs on {used}: the CUDA provider did not load")
    (result,) = session.run(None, {"x": np.ones((1, 4), dtype=np.float32)})
    if not np.allclose(result, 2.0):
        raise RuntimeError(f"wrong result {result}")
    return f"providers {used}"


def _faiss_on_gpu() -> str:
    import faiss
    import numpy as np

    gpus = faiss.get_num_gpus()
    if gpus < 1:
        raise RuntimeError("faiss sees no GPU (the faiss-gpu build is not installed?)")
    vectors = np.random.default_rng(0).random((1000, 64), dtype=np.float32)
    index = faiss.IndexFlatL2(64)
    index.add(vectors)
    on_gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    _, found = on_gpu.search(vectors[:5], 1)
    if found[:, 0].tolist() != [0, 1, 2, 3, 4]:
        raise RuntimeError(f"the GPU index found {found[:, 0].tolist()}")
    return f"{gpus} GPU(s)"


def _chat(url: str, model: str, image: bool) -> dict[str, Any]:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (28, 28), 128).save(buffer, format="PNG")
    content: list[dict[str, Any]] = []
    if image:
        data = base64.b64encode(buffer.getvalue()).decode()
        content.append({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}})
    content.append({"type": "text", "text": "normal or pneumonia?"})
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0.0,
        "max_tokens": 8,
        "structured_outputs": {"choice": ["normal", "pneumonia"]},
    }
    request = urllib.request.Request(
        f"{url}/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        answer: dict[str, Any] = json.load(response)
    return answer


class _Vllm:
    """The tiny MedDr on vLLM's GPU build, started with the MedDr recipe's command."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{args.port}/v1"

    def start(self) -> str:
        from generalist import (
            MEDDR_CHAT_TEMPLATE,
            MEDDR_TEMPLATE_FILE,
            make_tiny_meddr,
            meddr_serve_command,
        )

        self.checkpoint = make_tiny_meddr(self.work / "tiny-meddr", self.args.tokenizer_from).path
        template = self.work / MEDDR_TEMPLATE_FILE
        template.write_text(MEDDR_CHAT_TEMPLATE)
        command = meddr_serve_command(
            str(self.checkpoint), gpus=1, port=self.args.port, template_path=str(template)
        )
        command[0] = self.args.vllm
        command[command.index("--host") + 1] = "127.0.0.1"
        log = (self.work / "vllm.log").open("wb")
        env = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="1", HF_HUB_OFFLINE="1")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.work / "vllm.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"vLLM exited with {self.process.returncode}:\n{tail}")
            try:
                urllib.request.urlopen(f"{self.url}/models", timeout=2)
                break
            except OSError:
                time.sleep(2)
        else:
            raise RuntimeError("vLLM did not answer within 900 s")
        seen, unseen = _chat(self.url, "meddr", True), _chat(self.url, "meddr", False)
        added = seen["usage"]["prompt_tokens"] - unseen["usage"]["prompt_tokens"]
        if added != 256 + 3:
            raise RuntimeError(f"the image added {added} prompt tokens, not 259")
        label = seen["choices"][0]["message"]["content"]
        if label not in ("normal", "pneumonia"):
            raise RuntimeError(f"answered outside the label set: {label!r}")
        return f"the image added {added} prompt tokens; answered {label!r}"

    def adapter(self) -> str:
        from protocol import Mode
        from site_agent.adapter import AdapterRecipe, AdapterTrainer, EvidenceExample

        trainer = AdapterTrainer(self.checkpoint, AdapterRecipe(rank=8, last_layers=None))
        examples = [
            EvidenceExample(
                f"Case {i}: normal or pneumonia?", label, "You are a doctor.", Mode.MOED
            )
            for i, label in enumerate(["normal", "pneumonia"] * 4)
        ]
        trainer.train(examples, epochs=1)
        folder = self.work / "adapter"
        trainer.save(folder, "meddr")
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.args.port}/v1/load_lora_adapter",
            json.dumps({"lora_name": "tiny-lora", "lora_path": str(folder)}).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120):
            pass
        answer = _chat(self.url, "tiny-lora", True)
        if answer.get("model") != "tiny-lora":
            raise RuntimeError(f"answered as {answer.get('model')!r}, not the adapter")
        return f"loaded; answered {answer['choices'][0]['message']['content']!r} under it"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer-from", type=Path, required=True)
    parser.add_argument("--vllm", default="vllm", help="vLLM's command (the GPU build)")
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory(prefix="gsco-gpu-check-") as folder:
        work = Path(folder)
        server = _Vllm(args, work)
        checks: list[tuple[str, Callable[[], str]]] = [
            ("onnxruntime on CUDA", lambda: _onnxruntime_on_cuda(work)),
            ("faiss on the GPU", _faiss_on_gpu),
            ("vLLM (GPU) serves the tiny MedDr with an image", server.start),
            ("a LoRA adapter on the tiny MedDr", server.adapter),
        ]
        try:
            for name, check in checks:
                try:
                    print(f"ok      {name}: {check()}", flush=True)
                except Exception as exc:  # noqa: BLE001  (each check reports, the next runs)
                    failed += 1
                    print(f"FAILED  {name}: {' '.join(str(exc).split())[:400]}", flush=True)
        finally:
            server.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

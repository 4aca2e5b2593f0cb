/**
 * `deno task demo [prompt] [maxNewTokens]`: a TinyStories story from the embedded stories260k
 * model (no network), streamed as it is generated, then tokens/s and where the time went.
 */
import { AutoModel } from "../mod.ts";

const dir = new URL("../models/stories260k", import.meta.url).pathname;
const prompt = Deno.args[0] ?? "Once upon a time";
const maxNewTokens = Number(Deno.args[1] ?? 256);
const write = (s: string) => Deno.stdout.writeSync(new TextEncoder().encode(s));

await using model = await AutoModel.fromPretrained(dir, { device: "cpu" });
model.profiler.reset();
write(prompt);
let tokens = 0;
const t0 = performance.now();
for await (const chunk of model.stream(prompt, { maxNewTokens })) {
  tokens++;
  write(chunk.text);
}
const seconds = (performance.now() - t0) / 1000;
console.log(
  `\n\n${tokens} tokens in ${seconds.toFixed(3)} s: ${(tokens / seconds).toFixed(1)} tok/s`,
);
console.log(
  `${model.config.architecture}, ${model.config.numLayers} layers (${model.residentLayers} resident), ` +
    `backend ${model.backend.info}\n`,
);
console.log(model.profiler.summary());

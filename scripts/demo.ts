/**
 * `deno task demo`: greedy generation from the embedded stories260k model (no network).
 * Prints the story, the token ids, and decode speed.
 */
import { Tokenizer } from "@huggingface/tokenizers";
import { AutoModel } from "../mod.ts";

const dir = new URL("../models/stories260k", import.meta.url).pathname;
const maxNewTokens = Number(Deno.args[0] ?? 200);

await using model = await AutoModel.fromPretrained(dir, { device: "cpu" });
const tokenizer = new Tokenizer(
  JSON.parse(await Deno.readTextFile(`${dir}/tokenizer.json`)),
  JSON.parse(await Deno.readTextFile(`${dir}/tokenizer_config.json`)),
);
const bos = model.config.bosTokenId ?? 1;
const t0 = performance.now();
const [ids] = await model.generate([[bos]], { maxNewTokens });
const seconds = (performance.now() - t0) / 1000;
const story = ids.slice(1);
const eos = story.findIndex((t) => model.config.eosTokenIds.includes(t));
console.log(
  tokenizer.decode(eos >= 0 ? story.slice(0, eos) : story, { skip_special_tokens: true }),
);
console.log();
console.log(`token ids: ${story.join(" ")}`);
console.log(
  `${story.length} tokens in ${seconds.toFixed(3)} s: ${
    (story.length / seconds).toFixed(1)
  } tok/s ` +
    `(${model.config.architecture}, ${model.config.numLayers} layers, ${model.residentLayers} resident, ` +
    `backend ${model.backend.info})`,
);

/**
 * Helpers the notebooks share: Vega-Lite charts rendered to SVG inside the kernel (no browser), and
 * the one-line JSON summary that `scripts/run_notebooks.py --check` compares between the committed
 * outputs and a fresh run.
 *
 * @module
 */
import * as vega from "npm:vega@6.4.0";
import * as vegaLite from "npm:vega-lite@6.4.1";

/** Renders a Vega-Lite spec to an SVG string (headless: `renderer: "none"`). */
export async function svgOf(spec: Record<string, unknown>): Promise<string> {
  const full = { background: "white", ...spec };
  // deno-lint-ignore no-explicit-any
  const compiled = vegaLite.compile(full as any).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Shows a Vega-Lite chart as an SVG output of the current cell. */
export async function plot(spec: Record<string, unknown>, alt = "chart"): Promise<void> {
  await Deno.jupyter.display(
    { "image/svg+xml": await svgOf(spec), "text/plain": `[${alt}]` },
    { raw: true },
  );
}

/**
 * Prints the notebook's key numbers as one line, `NOTEBOOK_SUMMARY {...}`. Sections:
 * `exact` (numbers within 1e-6 relative or absolute, everything else equal), `timings` (within 5×:
 * machines differ), `info` (shown, not compared). In the kernel the line is sent as the cell's
 * stdout before the cell ends: console.log output can reach a headless client after the cell's
 * idle status, and is then lost (one run in six here).
 */
export async function summary(s: {
  exact: Record<string, unknown>;
  timings?: Record<string, unknown>;
  info?: Record<string, unknown>;
}): Promise<void> {
  const line = `NOTEBOOK_SUMMARY ${JSON.stringify(s)}`;
  let inKernel = false;
  try {
    inKernel = typeof Deno.jupyter.broadcast === "function";
  } catch { /* Deno.jupyter throws outside the kernel */ }
  if (!inKernel) return console.log(line);
  await Deno.jupyter.broadcast("stream", { name: "stdout", text: `${line}\n` });
}

/**
 * The committed notebooks (notebooks/*.ipynb) are executed and read well: every code cell ran, no
 * cell holds an error, each has a chart and its NOTEBOOK_SUMMARY line, and no cell uses
 * `import.meta` (not available in a notebook cell). Re-executing them and comparing the numbers is
 * `python3 scripts/run_notebooks.py --check` (CI runs it; it needs Python and the Deno kernel).
 */
import assert from "node:assert/strict";

const DIR = new URL("../notebooks/", import.meta.url);
const EXPECTED = ["bigger_than_memory.ipynb", "parity.ipynb", "profiling.ipynb"];

interface Output {
  output_type: string;
  name?: string;
  text?: string | string[];
  data?: Record<string, string | string[]>;
  ename?: string;
  evalue?: string;
}
interface Cell {
  cell_type: string;
  source: string | string[];
  execution_count?: number | null;
  outputs?: Output[];
}
const text = (t: string | string[] | undefined) => Array.isArray(t) ? t.join("") : t ?? "";

Deno.test("notebooks: the expected ones are there", async () => {
  const names: string[] = [];
  for await (const e of Deno.readDir(DIR)) if (e.name.endsWith(".ipynb")) names.push(e.name);
  assert.deepEqual(names.sort(), EXPECTED);
});

for (const name of EXPECTED) {
  Deno.test(`notebooks: ${name} is executed, error-free, with a chart and a summary`, async () => {
    const nb = JSON.parse(await Deno.readTextFile(new URL(name, DIR)));
    assert.equal(nb.metadata?.kernelspec?.name, "deno");
    const cells: Cell[] = nb.cells;
    const md = cells.filter((c) => c.cell_type === "markdown").map((c) => text(c.source));
    assert(
      md.some((s) => s.includes("all permissions")),
      "a markdown cell says the kernel runs with all permissions",
    );
    let svg = 0, summaries = 0;
    for (const [i, c] of cells.entries()) {
      if (c.cell_type !== "code") continue;
      assert(!text(c.source).includes("import.meta"), `cell ${i} uses import.meta`);
      assert(typeof c.execution_count === "number", `cell ${i} was not executed`);
      for (const o of c.outputs ?? []) {
        assert(o.output_type !== "error", `cell ${i}: ${o.ename}: ${o.evalue}`);
        if (o.data?.["image/svg+xml"]) svg++;
        if (o.output_type === "stream" && /^NOTEBOOK_SUMMARY \{/m.test(text(o.text))) {
          const line = text(o.text).split("\n").find((l) => l.startsWith("NOTEBOOK_SUMMARY "))!;
          const s = JSON.parse(line.slice("NOTEBOOK_SUMMARY ".length));
          assert(typeof s.exact === "object", `${name}: the summary has an exact section`);
          summaries++;
        }
      }
    }
    assert(svg > 0, `${name}: no SVG chart in its outputs`);
    assert.equal(summaries, 1, `${name}: one NOTEBOOK_SUMMARY line`);
  });
}

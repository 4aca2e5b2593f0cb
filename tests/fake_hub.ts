/**
 * A fake Hugging Face hub for tests: two real HTTP servers on 127.0.0.1 (`Deno.serve`), the hub
 * and, on another port so on another origin, the CDN it redirects LFS downloads to — as
 * huggingface.co redirects to cdn-lfs.hf.co / cas-bridge.xethub.hf.co. It speaks the part of the
 * hub protocol that huggingface_hub (Python) and @huggingface/hub use to download:
 *
 * - `GET /api/models/{repo}/revision/{rev}` → `{_id, id, sha, private, gated, siblings: [{rfilename}], …}`
 *   (any `expand=` query is accepted and everything is returned).
 * - `POST /api/models/{repo}/paths-info/{rev}` with JSON `{paths, expand}` → one
 *   `{type: "file", path, size, oid, lfs?: {oid, size, pointerSize}}` per existing path; `oid` is
 *   the git blob sha1 (of the LFS pointer for LFS files), `lfs.oid` the sha256 of the content.
 *   `GET /api/models/{repo}/tree/{rev}` lists every file the same way (one page, no folders).
 * - `HEAD|GET /{repo}/resolve/{rev}/{path}`: a small file answers 200 with its bytes,
 *   `ETag: "<git sha1>"`, `Accept-Ranges` and Range → 206; an LFS file (`*.safetensors`, `*.bin`,
 *   `*.model`, `*.gguf`, as the hub's default .gitattributes) answers 302 to the CDN with
 *   `X-Linked-Etag: "<sha256>"`, `X-Linked-Size` and the pointer's `ETag`. Every answer carries
 *   `X-Repo-Commit`.
 * - CDN `GET /lfs/{sha256}?X-Amz-Signature=…` with Range → 206 / `Content-Range`, 416 past the end.
 *
 * Errors as the hub sends them, with `X-Error-Code` and a JSON `{"error": …}` body: an unknown
 * token → 401 anywhere; an unknown (or not granted private) repo → 401 `RepoNotFound` without a
 * token, 404 with one; an unknown revision → 404 `RevisionNotFound`; an unknown file → 404
 * `EntryNotFound`; a gated repo's metadata is public but its files answer 401 `GatedRepo` without
 * a token and 403 with a token that was not granted access.
 *
 * Faults to inject, each for the next download of one file: {@link FakeHub.cutOnce} (half the
 * requested bytes, then the connection closes), {@link FakeHub.stallOnce} (half, then silence),
 * {@link FakeHub.corruptOnce} (one byte flipped); and {@link FakeHub.ignoreRange} (200 with the
 * whole file to every Range request). {@link FakeHub.requests} logs every request of both servers.
 */
import { createHash } from "node:crypto";

/** The environment variables hub code reads: tests clear them so a developer's own never leak in. */
export const HUB_ENV: readonly string[] = [
  "HF_HUB_CACHE",
  "HF_HOME",
  "HF_ENDPOINT",
  "HF_TOKEN",
  "HUGGING_FACE_HUB_TOKEN",
  "HF_TOKEN_PATH",
  "HF_HUB_OFFLINE",
  "TRANSFORMERS_OFFLINE",
];

/** A repo served by the fake hub. */
export interface FakeRepo {
  /** `org/name`. */
  id: string;
  /** Branch name → the files of its one commit (path → content). */
  branches: Record<string, Record<string, Uint8Array | string>>;
  /** Who may download: everyone (default), accepted licences only, or granted tokens only. */
  access?: "public" | "gated" | "private";
  /** Tokens with access to a gated or private repo. */
  granted?: string[];
}

/** One request either server received. */
export interface LoggedRequest {
  server: "hub" | "cdn";
  method: string;
  path: string;
  range: string | null;
  authorization: string | null;
  acceptEncoding: string | null;
}

interface StoredFile {
  path: string;
  content: Uint8Array<ArrayBuffer>;
  /** Git blob sha1 of what git stores: the content, or the LFS pointer. */
  oid: string;
  lfs?: { oid: string; size: number; pointerSize: number };
}

interface Commit {
  sha: string;
  files: Map<string, StoredFile>;
}

const LFS = /\.(safetensors|bin|model|gguf)$/;

function gitOid(bytes: Uint8Array): string {
  return createHash("sha1").update(`blob ${bytes.length}\0`).update(bytes).digest("hex");
}

function storeFile(path: string, data: Uint8Array | string): StoredFile {
  const content = typeof data === "string" ? new TextEncoder().encode(data) : new Uint8Array(data);
  if (!LFS.test(path)) return { path, content, oid: gitOid(content) };
  const sha256 = createHash("sha256").update(content).digest("hex");
  const pointer = new TextEncoder().encode(
    `version https://git-lfs.github.com/spec/v1\noid sha256:${sha256}\nsize ${content.length}\n`,
  );
  return {
    path,
    content,
    oid: gitOid(pointer),
    lfs: { oid: sha256, size: content.length, pointerSize: pointer.length },
  };
}

function hubError(status: number, code: string | null, message: string): Response {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (code) headers["x-error-code"] = code;
  return Response.json({ error: message }, { status, headers });
}

/** The fake hub and its CDN. Stop it with `close()` or `await using`. */
export class FakeHub implements AsyncDisposable {
  /** Every request of both servers, in order. */
  readonly requests: LoggedRequest[] = [];
  /** Answer every Range request with 200 and the whole file. */
  ignoreRange = false;
  readonly #repos = new Map<string, { spec: FakeRepo; commits: Map<string, Commit> }>();
  readonly #tokens: Set<string>;
  readonly #faults = new Map<string, "cut" | "stall" | "corrupt">();
  readonly #byHash = new Map<string, StoredFile>();
  readonly #abort = new AbortController();
  readonly #timers = new Set<ReturnType<typeof setTimeout>>();
  #hub!: Deno.HttpServer<Deno.NetAddr>;
  #cdn!: Deno.HttpServer<Deno.NetAddr>;

  private constructor(repos: FakeRepo[], tokens: string[]) {
    this.#tokens = new Set(tokens);
    for (const spec of repos) {
      const commits = new Map<string, Commit>();
      for (const [branch, files] of Object.entries(spec.branches)) {
        const stored = new Map(Object.entries(files).map(([p, d]) => [p, storeFile(p, d)]));
        for (const f of stored.values()) if (f.lfs) this.#byHash.set(f.lfs.oid, f);
        const sha = createHash("sha1")
          .update(`${spec.id}\0${branch}\0${[...stored.values()].map((f) => f.oid).join()}`)
          .digest("hex");
        commits.set(branch, { sha, files: stored });
      }
      this.#repos.set(spec.id, { spec, commits });
    }
  }

  /** Starts both servers on free ports of 127.0.0.1; `tokens` are the tokens the hub knows. */
  static start(repos: FakeRepo[], tokens: string[] = []): FakeHub {
    const hub = new FakeHub(repos, tokens);
    const serve = (handler: (req: Request) => Response | Promise<Response>) =>
      Deno.serve(
        { hostname: "127.0.0.1", port: 0, signal: hub.#abort.signal, onListen() {} },
        handler,
      );
    hub.#hub = serve((req) => {
      hub.#log("hub", req);
      return hub.#handleHub(req);
    });
    hub.#cdn = serve((req) => {
      hub.#log("cdn", req);
      return hub.#handleCdn(req);
    });
    return hub;
  }

  /** The hub's base URL, for `hubUrl` / `HF_ENDPOINT`. */
  get url(): string {
    return `http://127.0.0.1:${this.#hub.addr.port}`;
  }

  /** The commit hash a branch of a repo resolves to. */
  commit(repoId: string, branch: string): string {
    return this.#repos.get(repoId)!.commits.get(branch)!.sha;
  }

  /** What the hub names a file's blob: the sha256 of an LFS file, else its git blob sha1. */
  blobName(repoId: string, branch: string, path: string): string {
    const f = this.#repos.get(repoId)!.commits.get(branch)!.files.get(path)!;
    return f.lfs?.oid ?? f.oid;
  }

  /** The next download of `path` sends half the requested bytes, then closes the connection. */
  cutOnce(path: string) {
    this.#faults.set(path, "cut");
  }

  /** The next download of `path` sends half the requested bytes, then nothing (until closed). */
  stallOnce(path: string) {
    this.#faults.set(path, "stall");
  }

  /** The next download of `path` has one byte flipped. */
  corruptOnce(path: string) {
    this.#faults.set(path, "corrupt");
  }

  /** Stops both servers. */
  async close() {
    for (const t of this.#timers) clearTimeout(t);
    this.#abort.abort();
    await Promise.all([this.#hub.finished, this.#cdn.finished]);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #log(server: "hub" | "cdn", req: Request) {
    this.requests.push({
      server,
      method: req.method,
      path: decodeURIComponent(new URL(req.url).pathname),
      range: req.headers.get("range"),
      authorization: req.headers.get("authorization"),
      acceptEncoding: req.headers.get("accept-encoding"),
    });
  }

  /** Resolves a repo + revision for a request, or the error response the hub would give. */
  #resolve(req: Request, repoId: string, rev: string, files: boolean): Commit | Response {
    const auth = req.headers.get("authorization");
    const token = auth?.startsWith("Bearer ") ? auth.slice(7) : null;
    if (token !== null && !this.#tokens.has(token)) {
      return hubError(401, null, "Invalid credentials in Authorization header");
    }
    const repo = this.#repos.get(repoId);
    const granted = token !== null && (repo?.spec.granted ?? []).includes(token);
    if (!repo || (repo.spec.access === "private" && !granted)) {
      return hubError(token === null ? 401 : 404, "RepoNotFound", "Repository not found");
    }
    if (files && repo.spec.access === "gated" && !granted) {
      return hubError(
        token === null ? 401 : 403,
        "GatedRepo",
        `Access to model ${repoId} is restricted. You must have access to it and be authenticated.`,
      );
    }
    const commit = repo.commits.get(rev) ?? [...repo.commits.values()].find((c) => c.sha === rev);
    return commit ?? hubError(404, "RevisionNotFound", `Revision Not Found for url: ${req.url}`);
  }

  async #handleHub(req: Request): Promise<Response> {
    const path = new URL(req.url).pathname;
    let m = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(path);
    if (m && req.method === "GET") {
      const [repoId, rev] = [m[1], decodeURIComponent(m[2])];
      const c = this.#resolve(req, repoId, rev, false);
      if (c instanceof Response) return c;
      const access = this.#repos.get(repoId)!.spec.access;
      return Response.json({
        _id: `id-${repoId}`,
        id: repoId,
        modelId: repoId,
        sha: c.sha,
        private: access === "private",
        gated: access === "gated" ? "manual" : false,
        disabled: false,
        downloads: 0,
        likes: 0,
        lastModified: "2025-01-01T00:00:00.000Z",
        pipeline_tag: "text-generation",
        siblings: [...c.files.keys()].map((rfilename) => ({ rfilename })),
      });
    }
    m = /^\/api\/models\/([^/]+\/[^/]+)\/(paths-info|tree)\/([^/]+)$/.exec(path);
    if (m && req.method === (m[2] === "tree" ? "GET" : "POST")) {
      const c = this.#resolve(req, m[1], decodeURIComponent(m[3]), false);
      if (c instanceof Response) return c;
      const paths = m[2] === "tree"
        ? [...c.files.keys()]
        : (await req.json() as { paths: string[] }).paths;
      return Response.json(
        paths.flatMap((p) => {
          const f = c.files.get(p);
          return f
            ? [{ type: "file", path: p, size: f.content.length, oid: f.oid, lfs: f.lfs }]
            : [];
        }),
      );
    }
    m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path);
    if (m && (req.method === "GET" || req.method === "HEAD")) {
      const c = this.#resolve(req, m[1], decodeURIComponent(m[2]), true);
      if (c instanceof Response) return c;
      const f = c.files.get(decodeURIComponent(m[3]));
      if (!f) return hubError(404, "EntryNotFound", `Entry not found: ${m[3]}`);
      const headers = new Headers({ "x-repo-commit": c.sha, etag: `"${f.oid}"` });
      if (f.lfs) {
        headers.set("x-linked-etag", `"${f.lfs.oid}"`);
        headers.set("x-linked-size", String(f.lfs.size));
        headers.set(
          "location",
          `http://127.0.0.1:${this.#cdn.addr.port}/lfs/${f.lfs.oid}?X-Amz-Signature=x`,
        );
        return new Response(null, { status: 302, headers });
      }
      return this.#serveBytes(req, f, headers);
    }
    return hubError(404, null, "Not Found");
  }

  #handleCdn(req: Request): Response {
    const m = /^\/lfs\/([0-9a-f]{64})$/.exec(new URL(req.url).pathname);
    const f = m && this.#byHash.get(m[1]);
    if (!f || req.method !== "GET") return new Response("not found", { status: 404 });
    return this.#serveBytes(req, f, new Headers());
  }

  /** 200 with the file, or 206 with the asked range; applies a pending fault of the file. */
  #serveBytes(req: Request, f: StoredFile, headers: Headers): Response {
    const size = f.content.length;
    headers.set("accept-ranges", "bytes");
    let body = f.content;
    let status = 200;
    const range = /^bytes=(\d+)-$/.exec(req.headers.get("range") ?? "");
    if (range && !this.ignoreRange) {
      const start = Number(range[1]);
      if (start >= size) {
        headers.set("content-range", `bytes */${size}`);
        return new Response(null, { status: 416, headers });
      }
      body = body.subarray(start);
      status = 206;
      headers.set("content-range", `bytes ${start}-${size - 1}/${size}`);
    }
    headers.set("content-length", String(body.length));
    if (req.method === "HEAD") return new Response(null, { status, headers });
    const fault = this.#faults.get(f.path);
    this.#faults.delete(f.path);
    if (fault === "corrupt") {
      body = body.slice();
      body[body.length >> 1] ^= 0xff;
    }
    if (fault !== "cut" && fault !== "stall") return new Response(body, { status, headers });
    const half = body.subarray(0, body.length >> 1);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(half);
        if (fault === "cut") c.close(); // fewer bytes than Content-Length: the client sees a cut
      },
      pull: (c) =>
        new Promise<void>((resolve) => {
          const t = setTimeout(() => {
            this.#timers.delete(t);
            c.close();
            resolve();
          }, 10_000);
          this.#timers.add(t);
          timer = t;
        }),
      cancel: () => {
        clearTimeout(timer);
        this.#timers.delete(timer!);
      },
    });
    return new Response(stream, { status, headers });
  }
}

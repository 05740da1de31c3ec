// Validate one .glb/.gltf with the Khronos glTF validator; print its JSON report on stdout.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const validator = require("gltf-validator");
const path = process.argv[2];
const data = new Uint8Array(await readFile(path));
const report = await validator.validateBytes(data, { maxIssues: 200 });
process.stdout.write(JSON.stringify(report));

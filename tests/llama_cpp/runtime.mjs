// llama.cpp itself (node-llama-cpp's prebuilt CPU build) for the GGUF tests, through
// tests/helpers_llama_cpp.py:
//   node runtime.mjs tokenize MODEL.gguf TEXTS.json - ENTRY   -> [[id, ...], ...]  (no BOS, special tokens as text)
//   node runtime.mjs tokenize MODEL.gguf TEXTS.json special ENTRY   (special-token text -> their ids, as a
//                                                                  chat front end tokenizes a rendered prompt)
//   node runtime.mjs greedy MODEL.gguf PROMPTS.json N ENTRY   -> [[id, ...], ...]  (greedy, stops at EOG or N)
// ENTRY is node-llama-cpp's dist/index.js: ESM imports ignore NODE_PATH, so the caller names it.
import fs from "fs";
import {pathToFileURL} from "url";

const [command, gguf, file, arg, entry] = process.argv.slice(2);
const {getLlama} = await import(pathToFileURL(entry).href);
const llama = await getLlama({gpu: false, build: "never"});  // never compile: prebuilt or fail
const inputs = JSON.parse(fs.readFileSync(file, "utf8"));

if (command === "tokenize") {
    const model = await llama.loadModel({modelPath: gguf, vocabOnly: true});
    const special = arg === "special";
    console.log(JSON.stringify(inputs.map(text => Array.from(model.tokenize(text, special)))));
} else if (command === "greedy") {
    const model = await llama.loadModel({modelPath: gguf});
    const results = [];
    for (const prompt of inputs) {
        const context = await model.createContext({contextSize: 256, sequences: 1});
        const out = [];
        for await (const token of context.getSequence().evaluate(prompt, {temperature: 0})) {
            if (model.isEogToken(token) || out.length >= Number(arg)) break;
            out.push(token);
        }
        results.push(out);
        await context.dispose();
    }
    console.log(JSON.stringify(results));
} else {
    console.error(`unknown command ${command}: tokenize or greedy`);
    process.exit(2);
}

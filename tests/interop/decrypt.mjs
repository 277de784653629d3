// Decrypt stdin to stdout, streaming.
//   node decrypt.mjs -i IDENTITY_FILE [-i IDENTITY_FILE ...]   (one key a line, # comments)
//   AGE_PASSPHRASE=... node decrypt.mjs -p
import { readFileSync } from "node:fs"
import { Readable } from "node:stream"
import { pipeline } from "node:stream/promises"
import { parseArgs } from "node:util"
import * as age from "age-encryption"

const { values } = parseArgs({
    options: {
        identity: { type: "string", short: "i", multiple: true, default: [] },
        passphrase: { type: "boolean", short: "p", default: false },
    },
})
const d = new age.Decrypter()
if (values.passphrase) d.addPassphrase(process.env.AGE_PASSPHRASE ?? "")
for (const path of values.identity) {
    for (const line of readFileSync(path, "utf8").split("\n")) {
        const key = line.trim()
        if (key && !key.startsWith("#")) d.addIdentity(key)
    }
}
try {
    const out = await d.decrypt(Readable.toWeb(process.stdin))
    await pipeline(Readable.fromWeb(out), process.stdout)
} catch (err) {
    console.error(`decrypt: ${err.message}`)
    process.exit(1)
}

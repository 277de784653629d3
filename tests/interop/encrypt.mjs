// Encrypt stdin to stdout, streaming.
//   node encrypt.mjs -r RECIPIENT [-r RECIPIENT ...]
//   AGE_PASSPHRASE=... node encrypt.mjs -p [-w WORK_FACTOR]
import { Readable } from "node:stream"
import { pipeline } from "node:stream/promises"
import { parseArgs } from "node:util"
import * as age from "age-encryption"

const { values } = parseArgs({
    options: {
        recipient: { type: "string", short: "r", multiple: true, default: [] },
        passphrase: { type: "boolean", short: "p", default: false },
        "work-factor": { type: "string", short: "w" },
    },
})
const e = new age.Encrypter()
if (values.passphrase) {
    e.setPassphrase(process.env.AGE_PASSPHRASE ?? "")
    if (values["work-factor"]) e.setScryptWorkFactor(Number(values["work-factor"]))
}
for (const r of values.recipient) e.addRecipient(r)
try {
    const out = await e.encrypt(Readable.toWeb(process.stdin))
    await pipeline(Readable.fromWeb(out), process.stdout)
} catch (err) {
    console.error(`encrypt: ${err.message}`)
    process.exit(1)
}

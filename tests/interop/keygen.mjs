// node keygen.mjs x25519|hybrid   print a new identity and its recipient, one per line
// node keygen.mjs recipient        print the recipient of the identity read from stdin
import { readFileSync } from "node:fs"
import * as age from "age-encryption"

const kind = process.argv[2] ?? "x25519"
try {
    if (kind === "recipient") {
        const identity = readFileSync(0, "utf8").trim()
        process.stdout.write(`${await age.identityToRecipient(identity)}\n`)
    } else if (kind === "hybrid" || kind === "x25519") {
        const identity = kind === "hybrid"
            ? await age.generateHybridIdentity()
            : await age.generateX25519Identity()
        process.stdout.write(`${identity}\n${await age.identityToRecipient(identity)}\n`)
    } else {
        console.error(`keygen: unknown command ${kind}`)
        process.exit(2)
    }
} catch (err) {
    console.error(`keygen: ${err.message}`)
    process.exit(1)
}

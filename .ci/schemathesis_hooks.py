"""schemathesis hooks for .ci/schemathesis (loaded through SCHEMATHESIS_HOOKS).

schemathesis validates the bodies it can deserialize (JSON, YAML) and skips the others. Most of
cairn's answers are `text/plain` (a CID, a peer id, a signed peer record, every error message),
so this reads them as the UTF-8 string they are documented to be: their schemas (`Cid`,
`PeerId`, the `spr:` pattern, the marketplace's fixed message, ...) are then checked too, and a
body that is not valid UTF-8 is reported.
"""

import schemathesis


@schemathesis.deserializer("text/plain")
def text_plain(_ctx, response):
    return response.content.decode("utf-8")

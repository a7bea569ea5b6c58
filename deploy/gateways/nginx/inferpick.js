// inferpick routing for nginx's JavaScript module (njs 0.7 or later): ask the picker with the
// request's body, so it sees the model (adapters included), the prompt and max_tokens, as it does
// behind Envoy; then proxy to its choice, or refuse in the OpenAI error shape.
//
// Used by inferpick-njs-locations.conf: `location /` runs `route` (js_content), which asks the
// picker through the internal location /_inferpick/authz and ends in one of three ways:
//   - the picker chose: $inferpick_endpoint and $inferpick_decision are set and the request goes
//     to @inferpick_endpoint (proxy_pass, then post_action closes the decision);
//   - the picker refused (404 unknown model, 429 shed, 503 nothing ready, 400...): the client gets
//     its answer, which /_inferpick/authz asks for in OpenAI's error shape, Retry-After kept;
//   - the picker could not be asked (down, timed out, not the picker's answer): the request goes
//     to @inferpick_picker_down, which the server block defines (fail open or closed).

/** Whether `body` is the picker's refusal in OpenAI's shape (`{"error": {"message", "code"}}`). */
function isRefusal(body) {
    try {
        const e = JSON.parse(body).error;
        return Boolean(e) && typeof e.message === 'string' && typeof e.code === 'string';
    } catch (_) {
        // Not JSON: nginx's own error page, so the picker was not the one answering.
        return false;
    }
}

/** Answers `status` with an OpenAI error body, as JSON, Retry-After kept. */
function refuse(r, status, body, retryAfter) {
    r.headersOut['Content-Type'] = 'application/json';
    if (retryAfter) {
        r.headersOut['Retry-After'] = retryAfter;
    }
    r.return(status, body);
}

/** js_content of `location /`: ask the picker with the body, then route, refuse or fall back. */
async function route(r) {
    let reply;
    try {
        // The subrequest carries the client's headers (model, priority, objective, session,
        // subset) and, here, its body.
        const body = r.requestText || '';
        reply = await r.subrequest('/_inferpick/authz', {method: 'POST', body});
    } catch (e) {
        r.error(`inferpick: asking the picker failed: ${e}`);
        r.internalRedirect('@inferpick_picker_down');
        return;
    }
    const endpoint = reply.headersOut['x-gateway-destination-endpoint'];
    if (reply.status === 200 && endpoint) {
        r.variables.inferpick_endpoint = endpoint;
        r.variables.inferpick_decision = reply.headersOut['x-inferpick-decision-id'] || '';
        r.internalRedirect('@inferpick_endpoint');
        return;
    }
    if (isRefusal(reply.responseText)) {
        refuse(r, reply.status, reply.responseText, reply.headersOut['Retry-After']);
        return;
    }
    r.warn(`inferpick: the picker answered ${reply.status} without a decision: failing over`);
    r.internalRedirect('@inferpick_picker_down');
}

/** The picker-down 503 of the fail-closed config, in the shape of the picker's refusals. */
function pickerDown(r) {
    const error = {
        message: 'the inferpick picker cannot be reached',
        type: 'server_error',
        param: null,
        code: 'no_ready_endpoint',
    };
    refuse(r, 503, JSON.stringify({error}) + '\n', '1');
}

export default {route, pickerDown};

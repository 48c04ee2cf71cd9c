// Bulk and interactive together: VUS clients send new single texts to /predict while one client
// submits bulk jobs of BULK_TEXTS new texts and follows each to its end. Interactive latency is
// reported apart (http_req_duration{scenario:interactive}); a job still running when the test's
// time is up is cancelled, so no bulk work outlives the run.
//   k6 run -e VUS=8 -e BULK_TEXTS=1000 -e DURATION=90s loadtest/bulk_mix.js
import http from 'k6/http';
import { check, sleep } from 'k6';
import { SharedArray } from 'k6/data';
import exec from 'k6/execution';
import { Counter, Trend } from 'k6/metrics';
import { BASE_URL, loadSentences, predict, chooseRunOffset, freshTexts } from './lib.js';

const sentences = new SharedArray('sentences', loadSentences);
const DURATION = __ENV.DURATION || '60s';
const BULK_TEXTS = parseInt(__ENV.BULK_TEXTS || '5000', 10);
const ENDED = ['done', 'failed', 'cancelled'];

const bulkJobSeconds = new Trend('bulk_job_seconds');
const bulkTextsScored = new Counter('bulk_texts_scored');
const bulkJobsDone = new Counter('bulk_jobs_done');

export const options = {
  scenarios: {
    interactive: { executor: 'constant-vus', vus: parseInt(__ENV.VUS || '8', 10), duration: DURATION, exec: 'interactive' },
    bulk: { executor: 'constant-vus', vus: 1, duration: DURATION, exec: 'bulk' },
  },
  thresholds: {
    checks: ['rate>0.99'],
    [`http_req_duration{scenario:interactive}`]: [`p(99)<${__ENV.INTERACTIVE_P99_MS || '2000'}`],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(50)', 'p(95)', 'p(99)'],
};

// Each run passes a different RUN_OFFSET so no run meets another's cached texts; setup() gives
// every VU the same one (see chooseRunOffset in lib.js).
export function setup() {
  return { runOffset: chooseRunOffset() };
}

export function interactive(data) {
  predict(freshTexts(sentences, data.runOffset, '', 1, 1));
}

function seconds(duration) {
  const match = /^(\d+(?:\.\d+)?)(s|m)$/.exec(duration);
  if (!match) {
    throw new Error(`DURATION ${duration}: write it as seconds (60s) or minutes (2m)`);
  }
  return parseFloat(match[1]) * (match[2] === 'm' ? 60 : 1);
}

function jsonHeaders(name) {
  return { headers: { 'Content-Type': 'application/json' }, tags: { name } };
}

function allResultsScored(statusUrl) {
  let url = `${statusUrl}/results?offset=0&limit=10000`;
  let seen = 0;
  while (url) {
    const page = http.get(url, { tags: { name: 'job results' } });
    if (page.status !== 200 || !page.json('predictions').every((p) => p !== null)) {
      return false;
    }
    seen += page.json('predictions').length;
    url = page.json('next') ? `${BASE_URL}${page.json('next')}` : null;
  }
  return seen === BULK_TEXTS;
}

export function bulk(data) {
  // Leave a second for the cancel before the scenario's end; submit nothing after that.
  const endsAt = exec.scenario.startTime + (seconds(DURATION) - 1) * 1000;
  if (Date.now() >= endsAt) {
    sleep(1);
    return;
  }
  // Bulk texts end with a word no interactive text has, so neither side meets the other's in the cache.
  const texts = freshTexts(sentences, data.runOffset, ' bulk', BULK_TEXTS, BULK_TEXTS);
  const submitted = Date.now();
  const accepted = http.post(`${BASE_URL}/jobs`, JSON.stringify({ text: texts }), jsonHeaders('jobs'));
  if (!check(accepted, { 'bulk job accepted (202)': (r) => r.status === 202 })) {
    sleep(1);
    return;
  }
  const statusUrl = `${BASE_URL}${accepted.json('status_url')}`;
  let done = 0;
  let status = 'queued';
  while (Date.now() < endsAt) {
    const answer = http.get(statusUrl, { tags: { name: 'job status' } });
    if (check(answer, { 'job status is 200': (r) => r.status === 200 })) {
      const view = answer.json();
      check(view, { 'progress only grows': (v) => v.progress.done >= done });
      done = view.progress.done;
      status = view.status;
      if (ENDED.includes(status)) {
        break;
      }
    }
    sleep(0.5);
  }
  bulkTextsScored.add(done);
  if (status === 'done') {
    bulkJobsDone.add(1);
    bulkJobSeconds.add((Date.now() - submitted) / 1000);
    check(statusUrl, { 'results of a done job are complete': allResultsScored });
  } else if (!ENDED.includes(status)) {
    const cancelled = http.post(`${statusUrl}/cancel`, null, jsonHeaders('job cancel'));
    check(cancelled, { 'unfinished job cancelled at the end': (r) => r.status === 202 || r.status === 409 });
  }
}

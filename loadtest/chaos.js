// Load for bench/chaos.py: 32 clients of mixed traffic while a fault is injected mid-run.
//   k6 run -e BASE_URL=http://127.0.0.1:8000 -e DURATION=60s -e SYNC_WAIT_S=20 loadtest/chaos.js
// Every answer is classed: ok (200, or 202 with a job id that is then followed to the end),
// 503/429 with the service's JSON error shape, or bad (anything else: connection errors, other
// statuses, non-JSON bodies). An answer slower than the wait bound plus 5 s counts as a hang.
// Every accepted job is polled until it ends; bench/chaos.py then reads how every job ended from Redis.
import http from 'k6/http';
import { sleep } from 'k6';
import { Counter } from 'k6/metrics';
import { SharedArray } from 'k6/data';
import { BASE_URL, loadSentences, chooseRunOffset, freshTexts } from './lib.js';

const sentences = new SharedArray('sentences', loadSentences);
const DURATION = __ENV.DURATION || '60s';
const HANG_MS = (Number(__ENV.SYNC_WAIT_S || 20) + 5) * 1000;

const answersOk = new Counter('answers_ok');
const answersUnavailable = new Counter('answers_503_json');
const answersOverloaded = new Counter('answers_429_json');
const answersBad = new Counter('answers_bad');
const answersHung = new Counter('answers_hung');
const jobsAccepted = new Counter('jobs_accepted');
const jobsDone = new Counter('jobs_done');
const jobsFailed = new Counter('jobs_failed');
const jobsLost = new Counter('jobs_lost');

export const options = {
  scenarios: {
    cached: { executor: 'constant-vus', vus: 12, duration: DURATION, exec: 'cached' },
    uncached: { executor: 'constant-vus', vus: 14, duration: DURATION, exec: 'uncached' },
    async_jobs: { executor: 'constant-vus', vus: 6, duration: DURATION, exec: 'asyncJobs' },
  },
  summaryTrendStats: ['avg', 'med', 'p(99)', 'max'],
};

function hasErrorShape(response) {
  try {
    const body = response.json();
    return typeof body.error === 'string' && typeof body.message === 'string';
  } catch (error) {
    return false;
  }
}

// Class one answer; returns true when the texts were accepted (200 or 202).
function classify(response) {
  if (response.timings.duration > HANG_MS) answersHung.add(1);
  if (response.status === 200 || response.status === 202) {
    answersOk.add(1);
    return true;
  }
  if (response.status === 503 && hasErrorShape(response)) answersUnavailable.add(1);
  else if (response.status === 429 && hasErrorShape(response)) answersOverloaded.add(1);
  else answersBad.add(1, { status: String(response.status) });
  return false;
}

function post(texts, query) {
  return http.post(`${BASE_URL}/predict${query}`, JSON.stringify({ text: texts }), {
    headers: { 'Content-Type': 'application/json' },
    timeout: '60s',
  });
}

// Poll an accepted job to its end; 503s while Redis is away are waited out, not counted as loss.
function follow(response, texts) {
  jobsAccepted.add(1);
  const url = `${BASE_URL}${response.json('status_url')}`;
  const giveUpAt = Date.now() + 120000;
  while (Date.now() < giveUpAt) {
    const job = http.get(url, { timeout: '30s', tags: { name: 'job' } });
    if (job.status === 404) break;
    if (job.status === 200 && job.json('status') === 'done') {
      if (job.json('predictions').length === texts.length) jobsDone.add(1);
      else jobsLost.add(1);
      return;
    }
    if (job.status === 200 && job.json('status') === 'failed') {
      jobsFailed.add(1);
      return;
    }
    sleep(0.2);
  }
  jobsLost.add(1);
}

// One run offset for every VU (see chooseRunOffset in lib.js).
export function setup() {
  return { runOffset: chooseRunOffset() };
}

export function cached() {
  classify(post([sentences[Math.floor(Math.random() * Math.min(20, sentences.length))]], ''));
}

export function uncached(data) {
  const texts = freshTexts(sentences, data.runOffset, '', 1 + Math.floor(Math.random() * 4), 4);
  const response = post(texts, '');
  classify(response);
  if (response.status === 202) follow(response, texts);
  if (response.status !== 200 && response.status !== 202) sleep(0.2);
}

export function asyncJobs(data) {
  const texts = freshTexts(sentences, data.runOffset, ' later', 4, 4);
  const response = post(texts, '?wait=0');
  classify(response);
  if (response.status === 202) follow(response, texts);
  else sleep(0.2);
}

// An Azure Workbook over the app's telemetry (docs/CONTRACT.md §8): finished messages by outcome, poison
// records by code, time per message (p50/p95), Batch call duration (metric),
// confirmed jobs' time to completion (metric), sweep runs, kill-switch incidents (by state over time, and the
// latest) and alert requests. The queries are the files in
// infra/queries/, so the workbook, the docs and the tests read the same text.

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object = {}

@description('Resource id of the Application Insights component the workbook reads.')
param applicationInsightsId string

@description('Display name of the workbook.')
param displayName string = 'batch-terminator operations'

var timeRange = {
  type: 9
  name: 'parameters'
  content: {
    version: 'KqlParameterItem/1.0'
    parameters: [
      {
        id: 'c1e0d5f4-2b7a-4f0e-9d64-6c1b8a3f2e10'
        version: 'KqlParameterItem/1.0'
        name: 'TimeRange'
        label: 'Time range'
        type: 4
        isRequired: true
        value: {
          durationMs: 86400000
        }
        typeSettings: {
          selectableValues: [
            {
              durationMs: 3600000
            }
            {
              durationMs: 14400000
            }
            {
              durationMs: 86400000
            }
            {
              durationMs: 259200000
            }
            {
              durationMs: 604800000
            }
            {
              durationMs: 2592000000
            }
          ]
        }
      }
    ]
  }
}

// One panel per query file; the names are the files' names.
var panels = [
  {
    type: 3
    name: 'outcomes-over-time'
    content: {
      version: 'KqlItem/1.0'
      title: 'Finished messages by outcome'
      query: loadTextContent('../queries/outcomes-over-time.kql')
      size: 0
      queryType: 0
      resourceType: 'microsoft.insights/components'
      timeContextFromParameter: 'TimeRange'
      visualization: 'timechart'
    }
  }
  {
    type: 3
    name: 'poison-by-code'
    content: {
      version: 'KqlItem/1.0'
      title: 'Poison records by code'
      query: loadTextContent('../queries/poison-by-code.kql')
      size: 0
      queryType: 0
      resourceType: 'microsoft.insights/components'
      timeContextFromParameter: 'TimeRange'
      visualization: 'table'
    }
  }
  {
    type: 3
    name: 'batch-latency'
    content: {
      version: 'KqlItem/1.0'
      title: 'Time per message Batch answered (ms), p50 / p95'
      query: loadTextContent('../queries/batch-latency.kql')
      size: 0
      queryType: 0
      resourceType: 'microsoft.insights/components'
      timeContextFromParameter: 'TimeRange'
      visualization: 'timechart'
    }
  }
  {
    type: 3
    name: 'batch-call-duration'
    content: {
      version: 'KqlItem/1.0'
      title: 'Batch calls (ms): mean and slowest, by operation'
      query: loadTextContent('../queries/batch-call-duration.kql')
      size: 0
      queryType: 0
      resourceType: 'microsoft.insights/components'
      timeContextFromParameter: 'TimeRange'
      visualization: 'timechart'
    }
  }
  {
    type: 3
    name: 'confirmation-duration'
    content: {
      version: 'KqlItem/1.0'
      title: 'Confirmed jobs: terminate request to completion (s), mean and slowest'
      query: loadTextContent('../queries/confirmation-duration.kql')
      size: 0
      queryType: 0
      resourceType: 'microsoft.insights/components'
      timeContextFromParameter: 'TimeRange'
      visualization: 'timechart'
    }
  }
  {
    type: 3
    name: 'sweep-runs'
    content: {
      version: 'KqlItem/1.0'
      title: 'Sweep runs'
      query: loadTextContent('../queries/sweep-runs.kql')
      size: 0
      queryType: 0
      resourceType: 'microsoft.insights/components'
      timeContextFromParameter: 'TimeRange'
      visualization: 'table'
    }
  }
  {
    type: 3
    name: 'incidents-over-time'
    content: {
      version: 'KqlItem/1.0'
      title: 'Kill-switch incidents by state'
      query: loadTextContent('../queries/incidents-over-time.kql')
      size: 0
      queryType: 0
      resourceType: 'microsoft.insights/components'
      timeContextFromParameter: 'TimeRange'
      visualization: 'timechart'
    }
  }
  {
    type: 3
    name: 'incidents-latest'
    content: {
      version: 'KqlItem/1.0'
      title: 'Latest kill-switch incidents'
      query: loadTextContent('../queries/incidents-latest.kql')
      size: 0
      queryType: 0
      resourceType: 'microsoft.insights/components'
      timeContextFromParameter: 'TimeRange'
      visualization: 'table'
    }
  }
  {
    type: 3
    name: 'alert-requests'
    content: {
      version: 'KqlItem/1.0'
      title: 'alert_terminate requests'
      query: loadTextContent('../queries/alert-requests.kql')
      size: 0
      queryType: 0
      resourceType: 'microsoft.insights/components'
      timeContextFromParameter: 'TimeRange'
      visualization: 'table'
    }
  }
]

var workbook = {
  version: 'Notebook/1.0'
  items: concat([
    {
      type: 1
      name: 'intro'
      content: {
        json: '## batch-terminator\nOne record per finished message and one per incident state on logger `batch_terminator` (docs/CONTRACT.md §8, §10). Alerts: docs/DEPLOY.md.'
      }
    }
    timeRange
  ], panels)
  fallbackResourceIds: [
    applicationInsightsId
  ]
  '$schema': 'https://github.com/Microsoft/Application-Insights-Workbooks/blob/master/schema/workbook.json'
}

resource operationsWorkbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, applicationInsightsId, 'batch-terminator-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: applicationInsightsId
    serializedData: string(workbook)
  }
}

output workbookId string = operationsWorkbook.id
